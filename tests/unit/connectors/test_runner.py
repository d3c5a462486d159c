"""The runner's loop without a broker: cursors move only after acks, heartbeats tell down from quiet."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from connectors import runner as runner_module
from connectors.base import Connector, Cursor, FatalError, Page, RetriableError
from connectors.cursors import MemoryCursorStore
from connectors.runner import Backoff, ConnectorStatus, Runner
from schemas import Mention, utcnow


class FakeProducer:
    def __init__(self, fail_flush: bool = False) -> None:
        self.sent: list[Mention] = []
        self.unacked: list[Mention] = []
        self.statuses: list[dict[str, Any]] = []
        self.fail_flush = fail_flush

    def send_mentions(self, mentions: list[Mention]) -> int:
        self.unacked.extend(mentions)
        return 1

    def send_rejected(self, items: Any, *, source: str) -> None:
        pass

    def send_status(self, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def flush(self, timeout: float = 60.0) -> None:
        if self.fail_flush:
            raise RuntimeError("broker did not acknowledge")
        self.sent.extend(self.unacked)
        self.unacked.clear()


def mention(n: int) -> Mention:
    return Mention.build(source="test", native_id=str(n), text=f"post {n}", created_at=utcnow())


class Scripted(Connector):
    """Answers each poll from a script: a Page, or an exception to raise."""

    name = "scripted"
    poll_interval = 600.0

    def __init__(self, script: list[Page | Exception], runner: list[Runner]) -> None:
        self.script, self.runner, self.cursors_seen = script, runner, []

    async def poll(self, cursor: Cursor) -> Page:
        self.cursors_seen.append(cursor)
        if not self.script:
            self.runner[0].stop()
            return Page([], cursor)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Waiting advances a fake clock instead of sleeping."""
    now = [1000.0]

    async def sleep(self: Runner, seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(runner_module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(Runner, "_sleep", sleep)
    return now


async def test_errors_then_success_show_in_heartbeats_and_cursor_follows_acks(clock: list[float]) -> None:
    producer = FakeProducer()
    cursors = MemoryCursorStore()
    holder: list[Runner] = []
    connector = Scripted([RetriableError("scripted: HTTP 429 from x: rate limited", retry_after=7),
                          Page([mention(1), mention(2)], {"at": 2}),
                          FatalError("scripted: HTTP 401: not authorised; check TOKEN_ENV")], holder)
    runner = Runner(producer, cursors, heartbeat_every=30)  # type: ignore[arg-type]
    holder.append(runner)
    start = clock[0]
    await runner.run([connector])
    assert [m.native_id for m in producer.sent] == ["1", "2"]
    assert cursors.load("scripted") == {"at": 2}
    assert connector.cursors_seen[:3] == [None, None, {"at": 2}]
    states = [s["state"] for s in producer.statuses]
    assert "backoff" in states and "ok" in states and states[-1] == "failing"
    last = producer.statuses[-1]
    assert "check TOKEN_ENV" in last["last_error"] and last["last_success"] is not None
    assert last["items_total"] == 2
    # Retry-After was honoured (7 s), then the poll interval, then the long wait after a fatal error.
    assert clock[0] - start >= 7 + 600 + 300


async def test_a_long_poll_interval_still_beats(clock: list[float]) -> None:
    producer = FakeProducer()
    holder: list[Runner] = []
    connector = Scripted([Page([], {"at": 1}), Page([], {"at": 2})], holder)
    runner = Runner(producer, MemoryCursorStore(), heartbeat_every=30)  # type: ignore[arg-type]
    holder.append(runner)
    await runner.run([connector])
    # Two waits of 600 s each: a heartbeat every 30 s, not one per poll.
    assert len(producer.statuses) >= 2 * (600 // 30) - 2
    assert all(s["state"] == "ok" and s["items_per_min"] == 0 for s in producer.statuses[1:])


async def test_cursor_does_not_move_when_kafka_does_not_acknowledge(clock: list[float]) -> None:
    producer = FakeProducer(fail_flush=True)
    cursors = MemoryCursorStore()
    holder: list[Runner] = []
    connector = Scripted([Page([mention(1)], {"at": 1})], holder)
    runner = Runner(producer, cursors)  # type: ignore[arg-type]
    holder.append(runner)
    with pytest.raises(RuntimeError):
        await runner.run([connector], once=True)
    assert cursors.load("scripted") is None and producer.sent == []


def test_backoff_has_jitter_grows_and_respects_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0 <= d <= 300 for d in delays)
    assert len({round(d, 6) for d in delays}) > 1  # jittered, not a fixed schedule
    assert max(delays[8:]) > 1.0  # the ceiling grew
    assert backoff.next_delay(retry_after=42) == 42
    backoff.reset()
    assert backoff.failures == 0


def test_items_per_min_over_a_quarter_hour() -> None:
    status = ConnectorStatus("s", started=0.0)
    status._recent = [(100.0, 30), (700.0, 15)]
    assert status.items_per_min(now=900.0) == 3.0  # 45 items over 15 minutes
    assert status.items_per_min(now=2000.0) == 0.0  # quiet since: the source works, nobody is talking


def test_the_same_error_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: now[0])
    log = runner_module._RateLimitedLog(every=60)
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            log.error("k", "%s down", "news")
            now[0] += 10
        now[0] += 60
        log.error("k", "%s down", "news")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["news down", "news down (4 similar errors since the last report)"]

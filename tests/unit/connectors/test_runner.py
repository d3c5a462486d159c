"""The runner's loop without a broker: cursors move only after acks, heartbeats tell down from quiet."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from kafka.errors import KafkaError

from connectors import runner as runner_module
from connectors.base import Connector, Cursor, FatalError, Page, RateLimited, RetriableError
from connectors.cursors import MemoryCursorStore
from connectors.runner import Backoff, ConnectorStatus, Delivery, MentionProducer, Runner
from schemas import Mention, utcnow


class FakeFuture:
    """A Kafka send's future: ``get`` acknowledges the mentions, or raises when the broker refused them."""

    def __init__(self, producer: FakeProducer, mentions: list[Mention]) -> None:
        self.producer, self.mentions = producer, mentions

    def get(self, timeout: float | None = None) -> None:
        if self.producer.fail_flush:
            raise RuntimeError("broker did not acknowledge")
        if any(m.source in self.producer.refusing for m in self.mentions):
            self.producer.refusing.discard(self.mentions[0].source)  # refused once, then Kafka is back
            raise KafkaError("NotEnoughReplicasError")
        self.producer.sent.extend(self.mentions)


class FakeProducer:
    def __init__(self, fail_flush: bool = False, refusing: set[str] | None = None) -> None:
        self.sent: list[Mention] = []
        self.statuses: list[dict[str, Any]] = []
        self.fail_flush = fail_flush
        self.refusing = refusing or set()  # sources whose next delivery Kafka refuses

    def send_mentions(self, mentions: list[Mention]) -> Delivery:
        return Delivery([FakeFuture(self, list(mentions))])

    def send_rejected(self, items: Any, *, source: str) -> Delivery:
        return Delivery([FakeFuture(self, [])])

    def send_status(self, status: dict[str, Any]) -> None:
        self.statuses.append(status)


def mention(n: int, source: str = "test") -> Mention:
    return Mention.build(source=source, native_id=str(n), text=f"post {n}", created_at=utcnow())


class Scripted(Connector):
    """Answers each poll from a script: a Page, or an exception to raise."""

    name = "scripted"
    poll_interval = 600.0

    def __init__(self, script: list[Page | Exception], runner: list[Runner], name: str = "scripted") -> None:
        self.script, self.runner, self.cursors_seen = script, runner, []
        self.name = name

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


async def test_a_page_kafka_refuses_is_read_again_and_the_other_sources_go_on(clock: list[float]) -> None:
    producer = FakeProducer(refusing={"a"})
    cursors = MemoryCursorStore()
    holder: list[Runner] = []
    page_a = Page([mention(1, "a")], {"at": "a1"})
    a = Scripted([page_a, page_a], holder, name="a")  # a real source reads the same page from the same cursor
    b = Scripted([Page([mention(2, "b")], {"at": "b1"}), Page([mention(3, "b")], {"at": "b2"})], [], name="b")
    runner = Runner(producer, cursors)  # type: ignore[arg-type]
    holder.append(runner)
    b.runner.append(runner)
    await runner.run([a, b])
    # A's page was refused once: its cursor stayed put, it asked again from there, and got in.
    assert a.cursors_seen[:2] == [None, None] and cursors.load("a") == {"at": "a1"}
    # B was not held up, nor stopped, by A's trouble.
    assert sorted((m.source, m.native_id) for m in producer.sent) == [("a", "1"), ("b", "2"), ("b", "3")]
    assert cursors.load("b") == {"at": "b2"}
    refused = [s for s in producer.statuses if s["connector"] == "a" and s["state"] == "backoff"]
    assert refused and "Kafka did not acknowledge" in refused[0]["last_error"]


class FullDisk(MemoryCursorStore):
    def save(self, connector: str, cursor: Any) -> None:
        raise OSError(28, "No space left on device")


async def test_a_cursor_that_cannot_be_saved_does_not_stop_the_sources(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    producer = FakeProducer()
    holder: list[Runner] = []
    connector = Scripted([Page([mention(1)], {"at": 1}), Page([mention(2)], {"at": 2})], holder)
    runner = Runner(producer, FullDisk())  # type: ignore[arg-type]
    holder.append(runner)
    with caplog.at_level(logging.ERROR):
        await runner.run([connector])
    # The source read on from the cursor it holds in memory.
    assert [m.native_id for m in producer.sent] == ["1", "2"] and connector.cursors_seen[:2] == [None, {"at": 1}]
    assert "could not save the cursor" in caplog.text


class SharedKafka:
    """kafka-python's producer as two sources share it; the record of native id ``lost`` is refused.

    Its ``flush`` holds the first caller until a second one arrives, and the second until the
    refused record was looked at: the order in which one source's flush used to take (and
    report) the other's delivery results.
    """

    def __init__(self, **config: Any) -> None:
        self.flushes = 0
        self.second_flush = threading.Event()
        self.refusal_seen = threading.Event()

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def send(self, topic: str, value: bytes, **kwargs: Any) -> KafkaFuture:
        return KafkaFuture(self, refused=b'"native_id":"lost"' in value)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        if self.flushes == 1:
            self.second_flush.wait(5)
        else:
            self.second_flush.set()
            self.refusal_seen.wait(5)


class KafkaFuture:
    def __init__(self, kafka: SharedKafka, refused: bool) -> None:
        self.kafka, self.refused = kafka, refused

    def get(self, timeout: float | None = None) -> None:
        if self.refused:
            self.kafka.refusal_seen.set()
            raise KafkaError("NotEnoughReplicasError")


async def test_a_refused_record_fails_its_own_source_and_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "KafkaProducer", SharedKafka)
    producer = MentionProducer(["kafka:9092"], topic_raw="raw", topic_rejected="rejected")
    cursors = MemoryCursorStore()
    runner = Runner(producer, cursors)
    delivered = Mention.build(source="a", native_id="kept", text="refund late", created_at=utcnow())
    refused = Mention.build(source="b", native_id="lost", text="myGov down", created_at=utcnow())
    results = await asyncio.gather(runner._send("a", Page([delivered], {"at": "a1"})),
                                   runner._send("b", Page([refused], {"at": "b1"})),
                                   return_exceptions=True)
    # B hears of the refusal (and keeps its cursor, see above); A's send is acknowledged.
    assert results[0] is None and isinstance(results[1], KafkaError)


def test_backoff_has_jitter_grows_and_respects_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0 <= d <= 300 for d in delays)
    assert len({round(d, 6) for d in delays}) > 1  # jittered, not a fixed schedule
    assert max(delays[8:]) > 1.0  # the ceiling grew
    assert backoff.next_delay(retry_after=42) == 42
    backoff.reset()
    assert backoff.failures == 0


def test_a_zero_wait_is_at_least_a_second() -> None:
    backoff = Backoff()
    assert [backoff.next_delay(0.0) for _ in range(3)] == [1.0, 1.0, 1.0]
    assert all(Backoff().next_delay() >= 1.0 for _ in range(50))  # the first jittered wait too


async def test_retry_after_zero_does_not_ask_again_at_once(clock: list[float]) -> None:
    holder: list[Runner] = []
    connector = Scripted([RetriableError("scripted: HTTP 429 from x: rate limited", retry_after=0.0)], holder)
    runner = Runner(FakeProducer(), MemoryCursorStore())  # type: ignore[arg-type]
    holder.append(runner)
    start = clock[0]
    await runner.run([connector])
    assert len(connector.cursors_seen) == 2 and clock[0] - start >= 1.0


async def test_a_rate_limit_met_half_way_delivers_the_page_then_waits_as_told(clock: list[float]) -> None:
    producer = FakeProducer()
    cursors = MemoryCursorStore()
    holder: list[Runner] = []
    limited = RateLimited("scripted: HTTP 429 from x: rate limited", retry_after=42)
    connector = Scripted([Page([mention(1)], {"at": 1}, rate_limited=limited)], holder)
    runner = Runner(producer, cursors)  # type: ignore[arg-type]
    holder.append(runner)
    start = clock[0]
    await runner.run([connector])
    assert [m.native_id for m in producer.sent] == ["1"] and cursors.load("scripted") == {"at": 1}
    # The platform's 42 s, not the 600 s poll interval nor at once.
    assert clock[0] - start == 42
    assert "backoff" in [s["state"] for s in producer.statuses]


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


class RecordingKafka:
    """kafka-python's producer, keeping what was sent to which topic."""

    def __init__(self, **config: Any) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def send(self, topic: str, value: bytes, **kwargs: Any) -> FakeAck:
        self.sent.append((topic, value))
        return FakeAck()


class FakeAck:
    def get(self, timeout: float | None = None) -> None:
        return None


def test_a_mention_too_large_for_a_record_loses_its_raw_payload_or_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner_module, "KafkaProducer", RecordingKafka)
    producer = MentionProducer(["kafka:9092"], topic_raw="raw", topic_rejected="rejected")
    big_raw = Mention.build(source="news", native_id="1", text="myGov down", created_at=utcnow(),
                            raw={"html": "x" * 1_200_000})
    big_url = Mention.build(source="news", native_id="2", text="refund late", created_at=utcnow(),
                            url="https://example.com/" + "y" * 1_200_000)
    small = Mention.build(source="news", native_id="3", text="BAS due?", created_at=utcnow())
    producer.send_mentions([big_raw, big_url, small]).wait()
    kafka: RecordingKafka = producer._producer  # type: ignore[assignment]
    assert all(len(value) <= runner_module.MAX_RECORD_BYTES for _, value in kafka.sent)
    pages = [orjson.loads(value)["mentions"] for topic, value in kafka.sent if topic == "raw"]
    carried = {m["native_id"]: m for page in pages for m in page}
    assert set(carried) == {"1", "3"} and carried["1"]["raw"] is None and carried["1"]["text"] == "myGov down"
    [rejected] = [orjson.loads(value) for topic, value in kafka.sent if topic == "rejected"]
    assert rejected["topic"] == "connector:news" and "more than a Kafka record takes" in rejected["reason"]
    assert big_url.id in rejected["reason"] and len(rejected["payload"]) <= 2000


async def test_a_source_with_a_part_down_is_degraded_and_says_which_once_a_minute(
        clock: list[float], caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer()
    holder: list[Runner] = []
    skipped = {"feed https://news.example/rss": "HTTP 503 from news.example"}
    connector = Scripted([Page([mention(1)], {"at": 1}, skipped=skipped, has_more=True),
                          Page([mention(2)], {"at": 2}, skipped=skipped, has_more=True),
                          Page([mention(3)], {"at": 3})], holder)
    runner = Runner(producer, MemoryCursorStore(), heartbeat_every=30)  # type: ignore[arg-type]
    holder.append(runner)
    await runner.run([connector])
    assert [m.native_id for m in producer.sent] == ["1", "2", "3"]  # the parts that answered are read
    degraded = [s for s in producer.statuses if s["state"] == "degraded"]
    assert len(degraded) == 1  # said at once, and not again while nothing changes
    assert degraded[0]["last_error"] == "skipped feed https://news.example/rss: HTTP 503 from news.example"
    assert producer.statuses[-1]["state"] == "ok"  # every part answered again
    said = [r.getMessage() for r in caplog.records if "read, but skipped" in r.getMessage()]
    assert said == ["scripted: read, but skipped feed https://news.example/rss: HTTP 503 from news.example"]


AT = datetime(2024, 11, 20, 3, 12, tzinfo=UTC)  # fixed times: a mention's size does not depend on the clock


def sized(n: int, size: int) -> Mention:
    """A mention whose JSON is exactly ``size`` bytes."""
    base = Mention.build(source="news", native_id=str(n), text="x", created_at=AT, fetched_at=AT)
    grown = base.model_copy(update={"text": "x" * (1 + size - len(base.model_dump_json().encode()))})
    assert len(grown.model_dump_json().encode()) == size
    return grown


def test_a_busy_poll_is_split_into_records_kafka_takes() -> None:
    mentions = [sized(n, 5_000) for n in range(300)]  # 1.5 MB in all, one partition
    records, refused = runner_module.encode_pages(mentions, partitions=1)
    assert refused == []
    assert len(records) > 1
    assert all(len(value) <= runner_module.MAX_RECORD_BYTES for _, value in records)
    carried = [m["native_id"] for _, value in records for m in orjson.loads(value)["mentions"]]
    assert carried == [str(n) for n in range(300)]  # every mention once, in order


def test_a_record_carries_at_most_500_mentions() -> None:
    mentions = [sized(n, 300) for n in range(runner_module.MAX_PAGE_MENTIONS + 1)]
    records, _ = runner_module.encode_pages(mentions, partitions=1)
    assert runner_module.MAX_PAGE_MENTIONS == 500
    assert [len(orjson.loads(value)["mentions"]) for _, value in records] == [500, 1]


@pytest.mark.parametrize("sizes", [
    [runner_module.MAX_MENTION_BYTES],  # one mention as large as a record carries
    [450_000, runner_module.MAX_RECORD_BYTES - 450_000 - 35],  # two that fill a record to the byte
    [450_000, runner_module.MAX_RECORD_BYTES - 450_000 - 34],  # one byte over: two records
], ids=["one-mention", "two-mentions", "one-byte-over"])
def test_a_record_filled_to_the_limit_stays_within_it(sizes: list[int]) -> None:
    records, refused = runner_module.encode_pages([sized(n, s) for n, s in enumerate(sizes)], partitions=1)
    assert refused == []
    assert all(len(value) <= runner_module.MAX_RECORD_BYTES for _, value in records)
    one_page = sum(sizes) + len(sizes) - 1 + 34  # the mentions, their commas, the page around them
    if one_page <= runner_module.MAX_RECORD_BYTES:
        assert [len(value) for _, value in records] == [one_page] == [runner_module.MAX_RECORD_BYTES]
    else:
        assert len(records) == 2


def test_a_mention_one_byte_over_what_a_record_carries_is_refused() -> None:
    records, refused = runner_module.encode_pages([sized(0, runner_module.MAX_MENTION_BYTES + 1)], partitions=1)
    assert records == [] and len(refused) == 1
    assert f"({runner_module.MAX_MENTION_BYTES} for one mention)" in refused[0][1].reason

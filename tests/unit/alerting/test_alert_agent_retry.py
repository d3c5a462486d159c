"""An alert event is tried again through any outage, never acknowledged on an error; one the
search server refuses outright, or that keeps failing on a bug, is set aside with its reason."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError, BadRequestError
from elasticsearch import ConnectionError as ESConnectionError

from schemas.records import Alert
from streams.alerting.stream import STOPPING, until_done


def _api_error(status: int, cls: type[ApiError] = ApiError) -> ApiError:
    meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "localhost", 9200))
    return cls(message=f"status {status}", meta=meta, body={"error": {"type": "test"}})


class Flaky:
    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ESConnectionError("connection refused")
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


def _run(work: Flaky, *, stop_after_sleeps: int | None = None, bug_tries: int | None = 5) -> tuple[str | None, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def stopping() -> bool:
        return stop_after_sleeps is not None and len(slept) >= stop_after_sleeps

    outcome = asyncio.run(until_done(work, "alert a #1", stopping=stopping, max_backoff=4.0, sleep=sleep,
                                     bug_tries=bug_tries))
    return outcome, slept


def test_an_event_the_search_server_could_not_take_is_tried_until_it_goes_in() -> None:
    work = Flaky(failures=9)
    outcome, slept = _run(work)
    assert outcome is None and work.calls == 10
    assert slept == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]  # backing off, capped, never giving up


@pytest.mark.parametrize("status", [503, 429, 401])
def test_a_busy_or_locked_search_server_is_an_outage_and_waited_out(status: int) -> None:
    work = Flaky(failures=8, error=_api_error(status))
    assert _run(work)[0] is None and work.calls == 9


def test_an_event_handled_at_once_is_handled_once() -> None:
    work = Flaky(failures=0)
    assert _run(work) == (None, [])
    assert work.calls == 1


def test_a_stop_while_it_fails_reports_it_not_done() -> None:
    work = Flaky(failures=100)
    outcome, slept = _run(work, stop_after_sleeps=2)
    assert outcome == STOPPING and work.calls == 2 and len(slept) == 2


def test_a_request_the_search_server_refuses_is_not_tried_again() -> None:
    work = Flaky(failures=100, error=_api_error(400, BadRequestError))
    outcome, slept = _run(work)
    assert outcome is not None and outcome.startswith("refused by the search server: BadRequestError")
    assert work.calls == 1 and slept == []


def test_a_bug_is_tried_a_few_times_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    work = Flaky(failures=100, error=KeyError("severity"))
    outcome, slept = _run(work)
    assert outcome == "failed 5 times: KeyError: 'severity'" and work.calls == 5 and len(slept) == 4
    assert "failed (try 1)" in caplog.text


def test_setting_aside_is_tried_whatever_the_error() -> None:
    work = Flaky(failures=7, error=RuntimeError("broker unreachable"))
    assert _run(work, bug_tries=None)[0] is None and work.calls == 8


def _stream_and_set_aside(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[tuple[Any, str]]]:
    import faust

    from streams.alerting.stream import AlertingStream
    from streams.settings import Settings

    stream = AlertingStream(faust.App("earful-unit-set-aside", broker="kafka://127.0.0.1:1"), Settings(), topics=dict)
    aside: list[tuple[Any, str]] = []

    async def set_aside(event: Any, reason: str) -> None:
        aside.append((event, reason))

    monkeypatch.setattr(stream, "_set_aside", set_aside)
    return stream, aside


def _event(value: bytes) -> Any:
    return SimpleNamespace(value=value, message=SimpleNamespace(topic="alerts", partition=0, offset=7))


def test_a_record_that_is_no_alert_is_set_aside_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, aside = _stream_and_set_aside(monkeypatch)
    event = _event(b"{not json")
    assert asyncio.run(stream._handle_alert_event(event)) is None
    [(kept, reason)] = aside
    assert kept is event and reason.startswith("not an alert")


def test_an_alert_the_search_server_refuses_is_set_aside_and_the_next_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, aside = _stream_and_set_aside(monkeypatch)
    stored: list[int] = []

    async def store_and_deliver(alert: Any) -> None:
        if alert.sequence == 0:
            raise _api_error(400, BadRequestError)
        stored.append(alert.sequence)

    monkeypatch.setattr(stream, "_store_and_deliver", store_and_deliver)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in (0, 1):
        alert = Alert(id="a1", topic="outage", status="open" if seq == 0 else "update", severity="major",
                      opened_at=now, updated_at=now, window_start=now, observed=50, expected=10, score=0.99,
                      sequence=seq)
        assert asyncio.run(stream._handle_alert_event(_event(alert.model_dump_json().encode()))) is None
    assert stored == [1]
    [(_, reason)] = aside
    assert reason.startswith("refused by the search server: BadRequestError")


def test_subscribers_hear_of_an_alert_the_alerts_index_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    stream, aside = _stream_and_set_aside(monkeypatch)
    dispatched: list[int] = []

    class Dispatcher:
        async def dispatch(self, alert: Any) -> None:
            dispatched.append(alert.sequence)

    async def refuse(alert: Any) -> None:
        raise _api_error(400, BadRequestError)

    monkeypatch.setattr(stream, "_index_alert", refuse)
    stream.subscriptions = ["ops"]
    stream._dispatcher = Dispatcher()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    alert = Alert(id="a1", topic="outage", status="open", severity="major", opened_at=now, updated_at=now,
                  window_start=now, observed=50, expected=10, score=0.99, sequence=0)
    assert asyncio.run(stream._handle_alert_event(_event(alert.model_dump_json().encode()))) is None
    assert dispatched == [0]
    [(_, reason)] = aside
    assert reason.startswith("refused by the search server")

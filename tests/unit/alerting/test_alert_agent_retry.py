"""An alert event is tried again until stored and delivered, never acknowledged on an error."""

from __future__ import annotations

import asyncio

import pytest
from elasticsearch import ConnectionError as ESConnectionError

from streams.alerting.stream import until_done


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ESConnectionError("connection refused")


def _run(work: Flaky, *, stop_after_sleeps: int | None = None) -> tuple[bool, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def stopping() -> bool:
        return stop_after_sleeps is not None and len(slept) >= stop_after_sleeps

    done = asyncio.run(until_done(work, "alert a #1", stopping=stopping, max_backoff=4.0, sleep=sleep))
    return done, slept


def test_an_event_the_search_server_refused_is_tried_until_it_goes_in() -> None:
    work = Flaky(failures=5)
    done, slept = _run(work)
    assert done and work.calls == 6
    assert slept == [1.0, 2.0, 4.0, 4.0, 4.0]  # backing off, capped


def test_an_event_handled_at_once_is_handled_once() -> None:
    work = Flaky(failures=0)
    assert _run(work) == (True, [])
    assert work.calls == 1


def test_a_stop_while_it_fails_reports_it_not_done() -> None:
    work = Flaky(failures=100)
    done, slept = _run(work, stop_after_sleeps=2)
    assert not done and work.calls == 2 and len(slept) == 2


def test_a_bug_in_the_handler_is_retried_not_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    async def broken() -> None:
        calls.append(1)
        raise KeyError("severity")

    async def sleep(_seconds: float) -> None:
        pass

    done = asyncio.run(until_done(broken, "alert a #1", stopping=lambda: len(calls) >= 3,
                                  max_backoff=1.0, sleep=sleep))
    assert not done and len(calls) == 3
    assert "could not be stored or delivered" in caplog.text

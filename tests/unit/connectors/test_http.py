"""HttpConnector's walk over its keys, over httpx's MockTransport: one bad key, a rate limit, zero waits."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest

from connectors.base import FatalError, RateLimited, RetriableError
from connectors.http import (
    MIN_RETRY_AFTER,
    Fetched,
    HttpConnector,
    Native,
    exhausted_for,
    retry_after,
)
from schemas import Mention, utcnow


class Questions(HttpConnector):
    """Asks ``/ask/<key>`` per key; the answer's ``items`` become mentions, ``seen`` the key's cursor."""

    def __init__(self, keys: list[str], answer: httpx.MockTransport) -> None:
        super().__init__("questions", "https://api.example.org", transport=answer)
        self._keys = keys

    def keys(self) -> list[str]:
        return self._keys

    async def fetch(self, key: str, state: Any) -> Fetched:
        body = await self.get_json(f"ask/{key}")
        return Fetched([Native(item, key) for item in body["items"]], {"seen": body["items"]})

    def to_mention(self, native: Native) -> Mention:
        return Mention.build(source="test", native_id=native.item, text=f"about {native.query}",
                             created_at=utcnow())


def platform(answers: dict[str, httpx.Response], asked: list[str]) -> httpx.MockTransport:
    """Answers ``/ask/<key>`` from ``answers`` and notes which keys were asked, in order."""

    def handle(request: httpx.Request) -> httpx.Response:
        key = request.url.path.removeprefix("/ask/")
        asked.append(key)
        return answers[key]

    return httpx.MockTransport(handle)


def items(*ids: str) -> httpx.Response:
    return httpx.Response(200, json={"items": list(ids)})


async def test_a_failing_key_is_skipped_and_the_keys_after_it_are_still_asked(
        caplog: pytest.LogCaptureFixture) -> None:
    asked: list[str] = []
    connector = Questions(["a", "b", "c"], platform({
        "a": items("a1"), "b": httpx.Response(404, json={"message": "no such hashtag"}), "c": items("c1")}, asked))
    with caplog.at_level(logging.WARNING):
        page = await connector.poll({"b": {"seen": ["b0"]}})
    await connector.aclose()
    assert asked == ["a", "b", "c"]
    assert sorted(m.native_id for m in page.mentions) == ["a1", "c1"]
    # b's cursor stays where it was: its mentions are read once it answers again.
    assert page.next_cursor == {"a": {"seen": ["a1"]}, "b": {"seen": ["b0"]}, "c": {"seen": ["c1"]}}
    [(part, why)] = page.skipped.items()  # the runner shows the source as degraded, saying why
    assert part == "b" and "no such hashtag" in why


async def test_when_every_key_fails_the_poll_fails_retriable_first() -> None:
    connector = Questions(["a", "b"], platform({
        "a": httpx.Response(404, json={"message": "gone"}), "b": httpx.Response(503)}, []))
    with pytest.raises(RetriableError) as caught:
        await connector.poll(None)
    await connector.aclose()
    assert "503" in str(caught.value)


async def test_a_single_key_keeps_its_own_error() -> None:
    connector = Questions(["a"], platform({"a": httpx.Response(404, json={"message": "gone"})}, []))
    with pytest.raises(FatalError, match="gone"):
        await connector.poll(None)
    await connector.aclose()


async def test_a_rate_limit_half_way_keeps_its_retry_after_and_the_next_poll_starts_there() -> None:
    asked: list[str] = []
    answers = {"a": items("a1"), "b": httpx.Response(429, headers={"Retry-After": "30"}), "c": items("c1")}
    connector = Questions(["a", "b", "c"], platform(answers, asked))
    page = await connector.poll(None)
    assert [m.native_id for m in page.mentions] == ["a1"] and page.next_cursor == {"a": {"seen": ["a1"]}}
    assert isinstance(page.rate_limited, RateLimited) and page.rate_limited.retry_after == 30
    assert not page.has_more  # the runner waits the 30 s instead of asking again at once
    answers["b"] = items("b1")
    second = await connector.poll(page.next_cursor)
    await connector.aclose()
    # b and c get their turn first, so a limit always met at b cannot starve c.
    assert asked == ["a", "b", "b", "c", "a"]
    assert sorted(m.native_id for m in second.mentions) == ["a1", "b1", "c1"]


async def test_a_rate_limit_on_the_first_key_is_raised_with_its_retry_after() -> None:
    connector = Questions(["a", "b"], platform({"a": httpx.Response(429, headers={"Retry-After": "12"}),
                                                "b": items("b1")}, []))
    with pytest.raises(RateLimited) as caught:
        await connector.poll(None)
    await connector.aclose()
    assert caught.value.retry_after == 12


def test_a_zero_or_past_wait_is_at_least_a_second() -> None:
    now = time.time()
    assert retry_after({"retry-after": "0"}, now) == MIN_RETRY_AFTER >= 1.0
    assert retry_after({"x-ratelimit-reset": str(int(now) - 30)}, now) == MIN_RETRY_AFTER
    assert exhausted_for({"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(int(now) - 5)},
                         now) == MIN_RETRY_AFTER
    assert retry_after({"retry-after": "7"}, now) == 7


async def test_a_window_used_up_with_a_past_reset_still_holds_the_next_request() -> None:
    past = str(int(time.time()) - 60)
    asked: list[str] = []
    connector = Questions(["a"], platform({"a": httpx.Response(
        200, json={"items": ["a1"]}, headers={"x-rate-limit-remaining": "0", "x-rate-limit-reset": past})}, asked))
    await connector.poll(None)
    with pytest.raises(RateLimited) as caught:
        await connector.poll(None)
    await connector.aclose()
    assert asked == ["a"] and caught.value.retry_after is not None and caught.value.retry_after > 0.5


async def test_a_key_that_failed_before_a_rate_limit_stopped_the_poll_is_still_said(
        caplog: pytest.LogCaptureFixture) -> None:
    asked: list[str] = []
    connector = Questions(["a", "b"], platform({
        "a": httpx.Response(404, json={"message": "no such hashtag"}),
        "b": httpx.Response(429, headers={"Retry-After": "30"}, json={"message": "slow down"})}, asked))
    with caplog.at_level(logging.WARNING), pytest.raises(RateLimited):
        await connector.poll(None)
    await connector.aclose()
    assert asked == ["a", "b"]
    assert "skipped a this poll" in caplog.text and "no such hashtag" in caplog.text


@pytest.mark.parametrize("header", ["x-ratelimit-remaining", "x-rate-limit-remaining", "ratelimit-remaining"])
def test_one_request_left_is_not_a_used_up_window_and_none_left_is(header: str) -> None:
    now = time.time()
    reset = {"x-rate-limit-reset": str(int(now) + 120)}
    assert exhausted_for({header: "1", **reset}, now) is None
    assert exhausted_for({header: "1.0", **reset}, now) is None  # Reddit sends its counts as floats
    assert exhausted_for({header: "0", **reset}, now) == pytest.approx(120, abs=1)
    assert exhausted_for({header: "0.0", **reset}, now) == pytest.approx(120, abs=1)


async def test_the_last_request_of_a_window_does_not_hold_the_next_one() -> None:
    reset = str(int(time.time()) + 600)
    asked: list[str] = []
    connector = Questions(["a"], platform({"a": httpx.Response(
        200, json={"items": ["a1"]}, headers={"x-rate-limit-remaining": "1", "x-rate-limit-reset": reset})}, asked))
    await connector.poll(None)
    await connector.poll(None)  # one request was left: this one is sent
    await connector.aclose()
    assert asked == ["a", "a"]

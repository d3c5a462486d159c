"""RSS feeds against the fake platform: a feed that is down or broken, and feed URLs that hold secrets."""

from __future__ import annotations

import logging
import socket

import pytest
from cases import build
from fake_platform import FakePlatform, Reply, fixture

from connectors.base import RateLimited, RetriableError
from connectors.http import public_url

NEWS_IDS = {"CBMiAbc123", "CBMiDef456"}


def rss(name: str) -> Reply:
    return Reply(fixture("rss", name), content_type="application/rss+xml")


def closed_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_feed_whose_host_is_down_does_not_stop_the_feeds_after_it(caplog: pytest.LogCaptureFixture) -> None:
    down = f"http://127.0.0.1:{closed_port()}/rss/b"
    async with FakePlatform() as fake:
        fake.on("/rss/a", rss("empty.xml"))
        fake.on("/rss/c", rss("news_search.xml"))
        connector = build({"name": "news", "type": "rss", "base_url": fake.url,
                           "feeds": ["/rss/a", down, "/rss/c"]})
        try:
            with caplog.at_level(logging.WARNING):
                page = await connector.poll({f"feed:{down}": {"seen": ["kept"]}})
        finally:
            await connector.aclose()
        assert len(fake.seen("/rss/c")) == 1
    assert {m.native_id for m in page.mentions} == NEWS_IDS
    assert page.next_cursor is not None
    assert page.next_cursor[f"feed:{down}"] == {"seen": ["kept"]}  # b's cursor waits for b to answer
    assert {"feed:/rss/a", "feed:/rss/c"} <= set(page.next_cursor)
    assert list(page.skipped) == [f"feed {down}"]


async def test_feed_url_secrets_never_show_in_logs_errors_or_mentions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alerts = "/alerts/feeds/0412?apiKey=feed-secret-1"
    async with FakePlatform() as fake:
        fake.on("/alerts/feeds/0412", rss("news_search.xml"))
        fake.on("/private", Reply("<!doctype html><html><body>Please sign in<br></body></html>", content_type="text/html"))
        base = fake.url
        private = fake.url.replace("://", "://user:pass-secret-2@") + "/private?token=feed-secret-3"
        connector = build({"name": "news", "type": "rss", "base_url": fake.url,
                           "feeds": [alerts, {"url": private, "query": "private alerts"}]})
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
    assert {m.native_id for m in page.mentions} == NEWS_IDS
    assert {m.query for m in page.mentions} == {f"{base}/alerts/feeds/0412"}
    [(feed, why)] = page.skipped.items()
    assert feed.startswith("feed 'private alerts'") and "not an RSS or Atom feed" in why
    # Our lines and httpx's; the fake platform's own access log is not ours.
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("aiohttp"))
    shown = logged + "".join(m.model_dump_json() for m in page.mentions) + str(page.skipped)
    for secret in ("feed-secret-1", "pass-secret-2", "feed-secret-3"):
        assert secret not in shown
    # The cursor keeps its key (the URL as configured), so existing cursors stay valid.
    assert page.next_cursor is not None and f"feed:{alerts}" in page.next_cursor


def test_public_url_keeps_scheme_host_and_path_only() -> None:
    assert public_url("https://u:p@news.example.org:8443/rss/search?q=ATO&key=s#x") == \
        "https://news.example.org:8443/rss/search"


async def test_one_publishers_rate_limit_pauses_its_own_feeds_only(caplog: pytest.LogCaptureFixture) -> None:
    async with FakePlatform() as busy, FakePlatform() as news:
        busy.on("/rss/a", Reply("slow down", status=429, headers={"Retry-After": "600"}))
        news.on("/rss/c", rss("news_search.xml"))
        limited = f"{busy.url}/rss/a"
        connector = build({"name": "news", "type": "rss", "feeds": [limited, f"{busy.url}/rss/b",
                                                                    f"{news.url}/rss/c"]})
        try:
            with caplog.at_level(logging.WARNING):
                first = await connector.poll(None)
                second = await connector.poll(first.next_cursor)
        finally:
            await connector.aclose()
        # The busy publisher was asked once: its other feed, and the next poll, wait for its pause.
        assert len(busy.seen("/rss/a")) == 1 and busy.seen("/rss/b") == []
        assert len(news.seen("/rss/c")) == 2
    assert {m.native_id for m in first.mentions} == NEWS_IDS
    assert first.rate_limited is None and second.mentions == []
    assert first.next_cursor is not None and f"feed:{limited}" not in first.next_cursor
    said = str(first.skipped) + str(second.skipped)
    assert "rate limited" in said and "rate-limit window is used up" in said


async def test_every_feed_paused_raises_the_rate_limit() -> None:
    async with FakePlatform() as busy:
        busy.on("/rss/a", Reply("slow down", status=429, headers={"Retry-After": "600"}))
        connector = build({"name": "news", "type": "rss", "base_url": busy.url, "feeds": ["/rss/a", "/rss/b"]})
        try:
            with pytest.raises(RateLimited) as info:
                await connector.poll(None)
        finally:
            await connector.aclose()
        assert busy.seen("/rss/b") == []
    assert info.value.retry_after is not None and 590 < info.value.retry_after <= 600


async def test_one_publishers_long_pause_does_not_hold_up_another_publishers_feed() -> None:
    down = f"http://127.0.0.1:{closed_port()}/rss/b"  # another publisher, down for a moment
    async with FakePlatform() as busy:
        busy.on("/rss/a", Reply("slow down", status=429, headers={"Retry-After": "3600"}))
        connector = build({"name": "news", "type": "rss", "feeds": [f"{busy.url}/rss/a", down]})
        try:
            with pytest.raises(RetriableError) as info:
                await connector.poll(None)
        finally:
            await connector.aclose()
    # The runner waits its own short backoff, not the busy publisher's hour.
    assert not isinstance(info.value, RateLimited) and info.value.retry_after is None

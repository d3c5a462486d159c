"""A feed that answers wrongly (a redirect loop, a body that is not the gzip it claims) is one
key's failure: it is skipped and named, and the source's other feeds are still read."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from cases import build
from fake_platform import fixture

from connectors.base import FatalError

NEWS_IDS = {"CBMiAbc123", "CBMiDef456"}
Handler = Callable[[httpx.Request], httpx.Response]
GOOD, BAD = "https://news.example.org/rss/search", "https://alerts.example.org/rss/agency"


def looping(request: httpx.Request) -> httpx.Response:
    return httpx.Response(302, headers={"Location": str(request.url)})  # redirects to itself


def not_gzip(request: httpx.Request) -> httpx.Response:
    # Streamed, as a server's body is: httpx decodes it when the client reads it, not here.
    return httpx.Response(200, headers={"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"},
                          stream=httpx.ByteStream(b"<rss>this is not gzip</rss>"))


def publishers(bad: Handler) -> httpx.MockTransport:
    """The good feed's publisher answers with a news search; the other publisher answers as ``bad``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "news.example.org":
            return httpx.Response(200, content=fixture("rss", "news_search.xml"),
                                  headers={"Content-Type": "application/rss+xml"})
        return bad(request)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("answer", "error"), [(looping, "TooManyRedirects"), (not_gzip, "DecodingError")],
                         ids=["redirect-loop", "not-gzip"])
async def test_a_feed_that_answers_wrongly_is_skipped_and_the_other_feeds_are_read(answer: Handler, error: str) -> None:
    connector = build({"name": "news", "type": "rss", "feeds": [{"url": BAD, "query": "agency alerts"}, GOOD]},
                      transport=publishers(answer))
    try:
        page = await connector.poll({f"feed:{BAD}": {"seen": ["kept"]}})
    finally:
        await connector.aclose()
    assert {m.native_id for m in page.mentions} == NEWS_IDS
    assert page.next_cursor is not None
    assert page.next_cursor[f"feed:{BAD}"] == {"seen": ["kept"]}  # asked again, from here, next poll
    [(feed, why)] = page.skipped.items()
    assert feed == f"feed 'agency alerts' ({BAD})"
    assert why.startswith(f"{error} from alerts.example.org")


@pytest.mark.parametrize("answer", [looping, not_gzip], ids=["redirect-loop", "not-gzip"])
async def test_a_single_feed_that_answers_wrongly_fails_its_poll_as_a_connector_error(answer: Handler) -> None:
    # Not an httpx error escaping to the runner as a bug: the runner reports the feed and waits.
    connector = build({"name": "news", "type": "rss", "feeds": [BAD]}, transport=httpx.MockTransport(answer))
    try:
        with pytest.raises(FatalError, match="news: .* from alerts.example.org"):
            await connector.poll(None)
    finally:
        await connector.aclose()

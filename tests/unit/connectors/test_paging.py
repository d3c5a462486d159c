"""Reading every page of a busy moment: Bluesky's short pages, Facebook's posts with many new comments."""

from __future__ import annotations

from typing import Any

import pytest
from cases import build
from fake_platform import FakePlatform, Reply, fixture

from connectors import facebook
from connectors.base import Connector, Cursor

FB_POSTS = "/v21.0/104958162837/posts"
FB_POST = "104958162837_1030000000000001"
FB_COMMENTS = f"/v21.0/{FB_POST}/comments"


async def _read(connector: Connector, cursor: Cursor, polls: int) -> tuple[list[str], Cursor]:
    """Poll as the runner does (again at once while ``has_more``); the native ids, in order, and the cursor."""
    seen: list[str] = []
    for _ in range(polls):
        page = await connector.poll(cursor)
        seen += [m.native_id for m in page.mentions]
        cursor = page.next_cursor
        if not page.has_more:
            break
    return seen, cursor


def post(rkey: str, at: str) -> dict[str, Any]:
    return {"uri": f"at://did:plc:someone/app.bsky.feed.post/{rkey}", "indexedAt": at,
            "author": {"handle": "someone.bsky.social"}, "record": {"text": f"ATO {rkey}", "createdAt": at}}


async def test_bluesky_follows_the_cursor_of_a_short_page() -> None:
    newest = {"posts": [post("n5", "2024-11-20T05:00:00.000Z"), post("n4", "2024-11-20T04:50:00.000Z")],
              "cursor": "p2"}  # a short page (2 < limit) that says there is more
    known = fixture("bluesky", "search_page.json")
    older = {"posts": [post("n3", "2024-11-20T04:00:00.000Z"), known["posts"][0]]}  # reaches the watermark
    async with FakePlatform() as fake:
        fake.on("/xrpc/app.bsky.feed.searchPosts", Reply(known), Reply(newest), Reply(older))
        connector = build({"name": "bsky", "type": "bluesky", "base_url": fake.url, "queries": ["ATO"]})
        try:
            first = await connector.poll(None)
            seen, _ = await _read(connector, first.next_cursor, polls=5)
        finally:
            await connector.aclose()
        cursors = [r.query.get("cursor") for r in fake.seen("/xrpc/app.bsky.feed.searchPosts")]
    assert [s.rsplit("/", 1)[-1] for s in seen] == ["n5", "n4", "n3"]
    assert cursors == [None, None, "p2"]


def comment(n: int, minute: int) -> dict[str, Any]:
    return {"id": f"{FB_POST}_{n}", "message": f"comment {n}", "created_time": f"2024-11-20T10:{minute:02d}:00+0000",
            "from": {"id": str(n), "name": f"Person {n}"}}


def comments(items: list[dict[str, Any]], after: str | None) -> dict[str, Any]:
    paging: dict[str, Any] = {"cursors": {"before": "B", "after": after or "END"}}
    if after:
        paging["next"] = f"https://graph.facebook.com/v21.0/{FB_POST}/comments?after={after}&access_token=x"
    return {"data": items, "paging": paging}


def posts(block: dict[str, Any]) -> dict[str, Any]:
    return {"data": [{"id": FB_POST, "permalink_url": "https://www.facebook.com/ato/posts/1", "comments": block}]}


async def test_facebook_busy_post_goes_on_where_the_page_cap_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARFUL_FACEBOOK_PAGE_TOKEN", "EAAtoken")
    monkeypatch.setattr(facebook, "MAX_COMMENT_PAGES", 1)
    async with FakePlatform() as fake:
        fake.on(FB_POSTS, Reply(posts(comments([comment(10, 0)], None))),  # first run: the watermark
                Reply(posts(comments([comment(15, 15), comment(14, 14)], "A1"))))
        fake.on(FB_COMMENTS, Reply(comments([comment(13, 13), comment(12, 12)], "A2")),  # the cap: 1 page
                Reply(comments([comment(11, 11), comment(10, 0)], "A3")))
        connector = build({"name": "fb", "type": "facebook", "base_url": fake.url, "pages": ["104958162837"]})
        try:
            first = await connector.poll(None)
            seen, cursor = await _read(connector, first.next_cursor, polls=5)
            later, _ = await _read(connector, cursor, polls=1)
        finally:
            await connector.aclose()
        afters = [r.query.get("after") for r in fake.seen(FB_COMMENTS)]
    assert [m.native_id for m in first.mentions] == [f"{FB_POST}_10"]
    assert [s.rsplit("_", 1)[-1] for s in seen] == ["15", "14", "13", "12", "11"]  # 11 came after the cap
    assert afters[:2] == ["A1", "A2"]
    assert later == []  # the sweep ended at comment 15: nothing is read twice


def test_an_x_post_is_stored_as_written_whole_and_unescaped(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.http import Native

    monkeypatch.setenv("EARFUL_X_BEARER_TOKEN", "AAAAbearer-secret")
    connector = build({"name": "x-test", "type": "x", "base_url": "http://127.0.0.1:9", "queries": ["ATO"]})
    short = {"id": "1", "text": "ATO &amp; myGov both down &gt;:( &lt;3 nobody", "created_at": "2024-11-20T03:15:02.000Z"}
    assert connector.to_mention(Native(short, "ATO")).text == "ATO & myGov both down >:( <3 nobody"
    whole = "Tried to lodge my BAS four times tonight & the portal keeps timing out. " * 5
    long = {"id": "2", "text": whole[:270] + "…", "note_tweet": {"text": whole}, "created_at": "2024-11-20T03:15:02.000Z"}
    assert connector.to_mention(Native(long, "ATO")).text == whole.strip()

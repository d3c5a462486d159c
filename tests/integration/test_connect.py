"""Connectors over the real broker: cursors survive a restart, and `earful connect` runs the shipped config."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors import registry
from connectors.base import Page
from connectors.cli import read_heartbeats
from connectors.config import parse_sources
from connectors.cursors import FileCursorStore
from connectors.runner import MentionProducer, Runner
from tests.integration.conftest import ROOT, Stack, consume_all

ROUTE = "/2/tweets/search/recent"


def _tweet(n: int) -> dict[str, Any]:
    return {"id": str(1_859_000_000_000_000_000 + n), "text": f"myGov post {n}", "author_id": "42",
            "created_at": f"2024-11-20T03:{n // 60:02d}:{n % 60:02d}.000Z", "lang": "en"}


def _answer(tweets: list[dict[str, Any]], next_token: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"result_count": len(tweets)}
    if next_token:
        meta["next_token"] = next_token
    return {"data": tweets, "includes": {"users": [{"id": "42", "username": "taxpayer"}]}, "meta": meta}


class Platform:
    """X recent search: a first page, then eight newer posts arriving over four pages, newest first."""

    def __init__(self) -> None:
        self.first = [_tweet(2), _tweet(1)]
        self.newer = {None: ([_tweet(10), _tweet(9)], "t2"), "t2": ([_tweet(8), _tweet(7)], "t3"),
                      "t3": ([_tweet(6), _tweet(5)], "t4"), "t4": ([_tweet(4), _tweet(3), _tweet(2)], "t5")}
        self.asked: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.asked.append(query)
        if "since_id" not in query:
            return web.json_response(_answer(self.first))
        if query["since_id"] == _tweet(10)["id"]:
            return web.json_response(_answer([]))  # caught up
        tweets, token = self.newer[query.get("next_token")]
        return web.json_response(_answer(tweets, token))


def _producer(stack: Stack) -> MentionProducer:
    s = stack.settings
    return MentionProducer(s.kafka_servers, topic_raw=s.topic_raw, topic_rejected=s.topic_rejected,
                           topic_status=s.topic_status)


def _produced(stack: Stack) -> list[str]:
    # Everything produced was acknowledged before the runner moved on: read all there is.
    records = consume_all(stack.settings, stack.settings.topic_raw, expect=10**9, timeout=8)
    return [m["native_id"] for r in records for m in orjson.loads(r.value)["mentions"]]


async def _run(stack: Stack, url: str, cursors: FileCursorStore, *, stop_after: int | None, once: bool) -> int:
    (config,) = parse_sources([{"name": "x-resume", "type": "x", "base_url": url, "queries": ["myGov"],
                                "poll_interval": 0.01}])
    producer = _producer(stack)
    pages = 0
    runner: Runner

    def on_page(_: str, page: Page) -> None:
        nonlocal pages
        pages += 1
        if stop_after is not None and pages >= stop_after:
            runner.stop()

    runner = Runner(producer, cursors, on_page=on_page)
    try:
        await runner.run([registry.build(config)], once=once)
    finally:
        producer.close()
    return pages


async def test_stop_mid_sweep_and_restart_gives_every_post_once(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARFUL_X_BEARER_TOKEN", "bearer-for-the-local-platform")
    platform = Platform()
    app = web.Application()
    app.router.add_get(ROUTE, platform.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    cursors = FileCursorStore(stack.tmp / "cursors.json")
    try:
        url = str(server.make_url("/")).rstrip("/")
        # First page, then two pages of the newer posts; stopped there, mid-sweep.
        assert await _run(stack, url, cursors, stop_after=3, once=False) == 3
        assert cursors.load("x-resume")["search:myGov"]["token"] == "t3"  # type: ignore[index]
        before = _produced(stack)
        assert sorted(before) == sorted(_tweet(n)["id"] for n in (1, 2, 7, 8, 9, 10))
        # A new process, the same cursor file: it continues at the page it stopped before.
        await _run(stack, url, cursors, stop_after=None, once=True)
    finally:
        await server.close()
    assert platform.asked[3].get("next_token") == "t3"
    produced = _produced(stack)
    assert sorted(produced) == sorted(_tweet(n)["id"] for n in range(1, 11))  # no gap, no duplicate


def test_connect_once_runs_the_shipped_replay_and_reports_heartbeats(stack: Stack) -> None:
    shipped = yaml.safe_load((ROOT / "deploy" / "earful.yaml").read_text())
    stack.settings.config_file.write_text(yaml.safe_dump({"sources": shipped["sources"]}))

    listed = stack.earful("connectors", "--no-status")
    assert "replay" in listed.stdout and "missing credentials: set EARFUL_X_BEARER_TOKEN" in listed.stdout

    first = stack.earful("connect", "--once", "--source", "replay", timeout=120)
    assert "replay: 2000 mentions, state ok" in first.stdout
    produced = _produced(stack)
    assert len(produced) == 2000 and len(set(produced)) == len(produced)

    # Caught up: a second run finds the cursor at the end of the file and adds nothing.
    second = stack.earful("connect", "--once", "--source", "replay", timeout=120)
    assert "replay: 0 mentions" in second.stdout
    assert len(_produced(stack)) == 2000

    beats = read_heartbeats(stack.settings)
    assert beats["replay"]["state"] == "ok" and beats["replay"]["items_total"] == 0  # the second run's
    assert beats["replay"]["last_error"] is None
    listed = stack.earful("connectors")
    assert any(line.startswith("replay") and " ok" in line for line in listed.stdout.splitlines())

    missing = stack.earful("connect", "--source", "nope", check=False)
    assert missing.returncode != 0 and "no source named nope" in missing.stderr

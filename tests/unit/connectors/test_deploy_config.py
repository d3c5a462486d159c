"""The shipped config file: every source in it validates and builds, and the demo source comes first."""

from __future__ import annotations

from pathlib import Path

import yaml

from connectors import registry
from connectors.config import load
from connectors.replay_source import LoopingReplay

CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "earful.yaml"


def _sources():  # type: ignore[no-untyped-def]
    sources, ingest = load(yaml.safe_load(CONFIG.read_text()), origin=str(CONFIG))
    return sources, ingest


def test_the_bundled_replay_comes_first_and_needs_no_network() -> None:
    sources, _ = _sources()
    first = sources[0]
    assert first.model_dump(include={"name", "type", "speed", "loop"}) == {
        "name": "replay", "type": "replay", "speed": 60, "loop": True}
    assert str(first.path) == "connectors/samples/crisislext26-sample.csv"  # type: ignore[attr-defined]
    assert first.resolved_path().is_file()  # type: ignore[attr-defined]
    assert first.runnable


async def test_every_source_builds() -> None:
    sources, ingest = _sources()
    assert {s.type for s in sources} >= {"replay", "mastodon", "rss", "hackernews", "bluesky", "reddit", "x",
                                         "youtube", "facebook"}
    for source in sources:
        connector = registry.build(source)
        try:
            assert connector.name == source.name
            if isinstance(connector, LoopingReplay):
                page = await connector.poll(None)
                assert page.mentions  # the demo has data at once
        finally:
            await connector.aclose()
    assert ingest.secret_env == "EARFUL_INGEST_SECRET"


def test_sources_with_credentials_name_where_they_come_from(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name in ("EARFUL_X_BEARER_TOKEN", "EARFUL_YOUTUBE_API_KEY", "EARFUL_REDDIT_CLIENT_ID",
                 "EARFUL_REDDIT_CLIENT_SECRET", "EARFUL_FACEBOOK_PAGE_TOKEN", "EARFUL_MASTODON_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    by_name = {s.name: s for s in _sources()[0]}
    assert by_name["youtube"].missing_credentials() == ["EARFUL_YOUTUBE_API_KEY"]
    assert by_name["x"].missing_credentials() == ["EARFUL_X_BEARER_TOKEN"]
    assert not by_name["youtube"].runnable
    monkeypatch.setenv("EARFUL_YOUTUBE_API_KEY", "key-from-env")
    assert by_name["youtube"].runnable


def test_the_shipped_replay_keeps_posts_coming_across_quiet_months() -> None:
    from connectors.replay import ReplayConnector

    sources, _ = _sources()
    demo = registry.build(sources[0])
    assert isinstance(demo, LoopingReplay)
    inner = ReplayConnector(demo.options)
    rows = inner._load()
    span = (rows[-1].at - rows[0].at).total_seconds() / demo.options.speed  # type: ignore[operator]
    assert span > 86400  # at its own pace the sample would take more than a day, mostly silent
    offsets = [inner._offset(r) for r in rows]
    assert offsets == sorted(offsets)
    assert offsets[-1] <= 0.5 * len(rows)  # no wait between two posts is longer than half a second

"""Connector types by name: the ``type`` of a config entry to its config model and connector class.

Imports are lazy so that listing or validating sources never pulls in a
platform's dependencies (feedparser) until that platform is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectors.base import Connector
    from connectors.config import SourceConfig
    from streams.settings import Settings

#: type name -> (module, config class, connector class)
TYPES: dict[str, tuple[str, str, str]] = {
    "replay": ("connectors.replay_source", "ReplaySourceConfig", "LoopingReplay"),
    "mastodon": ("connectors.mastodon", "MastodonConfig", "MastodonConnector"),
    "rss": ("connectors.rss", "RssConfig", "RssConnector"),
    "hackernews": ("connectors.hackernews", "HackerNewsConfig", "HackerNewsConnector"),
    "bluesky": ("connectors.bluesky", "BlueskyConfig", "BlueskyConnector"),
    "reddit": ("connectors.reddit", "RedditConfig", "RedditConnector"),
    "x": ("connectors.x", "XConfig", "XConnector"),
    "youtube": ("connectors.youtube", "YouTubeConfig", "YouTubeConnector"),
    "facebook": ("connectors.facebook", "FacebookConfig", "FacebookConnector"),
}


def known_types() -> list[str]:
    return sorted(TYPES)


def _load(kind: str, index: int) -> Any:
    module, *names = TYPES[kind]
    return getattr(importlib.import_module(module), names[index])


def config_class(kind: str) -> type[SourceConfig] | None:
    return _load(kind, 0) if kind in TYPES else None


def connector_class(kind: str) -> type[Connector]:
    return _load(kind, 1)  # type: ignore[no-any-return]


def build(config: SourceConfig, settings: Settings | None = None, **kwargs: Any) -> Connector:
    """The connector for one config entry; ``kwargs`` (e.g. an httpx transport) go to its constructor."""
    if settings is not None:
        kwargs.setdefault("author_key", settings.author_hash_key)
        kwargs.setdefault("keep_raw", settings.keep_raw)
    return connector_class(config.type)(config, **kwargs)  # type: ignore[call-arg]

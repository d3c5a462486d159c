"""RSS and Atom: news searches and the agency's own feeds.

A feed is a window of its latest entries, not a log, so the cursor remembers
which entries were already sent (short hashes of their ids, bounded) rather than
a position. ETag and Last-Modified are sent back, so an unchanged feed costs
the publisher a 304 and us nothing.

A feed URL may carry a secret (``?apiKey=``, a private token): log lines and
mentions show the feed's ``query`` or its URL without user info, query string
or fragment (``public_url``), never the URL itself. Only the cursor, a local
file beside the config that holds the URL anyway, keeps the full URL as the
feed's key (``feed:<url>``), so existing cursors stay valid.
"""

from __future__ import annotations

import calendar
import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import feedparser
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import FatalError, SkippableItem
from connectors.config import SourceConfig
from connectors.http import Fetched, HttpConnector, Native, public_url
from connectors.text import html_to_text
from schemas import Mention, utcnow

SOURCE = "rss"
#: how many sent entry ids a feed's cursor remembers (a news search shows ~100 at a time)
SEEN_LIMIT = 1000


class Feed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    query: str | None = Field(default=None, description="what the feed stands for, e.g. the search terms; "
                              "shown in logs and on mentions instead of the URL")


class RssConfig(SourceConfig):
    type: Literal["rss"]
    base_url: str = Field(default="", description="feeds given as paths are relative to this")
    feeds: list[Feed] = Field(min_length=1)
    poll_interval: float = Field(default=300.0, gt=0)

    @field_validator("feeds", mode="before")
    @classmethod
    def _plain_urls(cls, value: Any) -> Any:
        # A feed may be written as its URL alone.
        if isinstance(value, list):
            return [{"url": v} if isinstance(v, str) else v for v in value]
        return value


def _short(native_id: str) -> str:
    return hashlib.sha1(native_id.encode()).hexdigest()[:16]


def entry_id(entry: dict[str, Any]) -> str:
    native_id = entry.get("id") or entry.get("link")
    if not native_id:
        raise SkippableItem("entry has neither an id nor a link")
    return str(native_id)


class RssConnector(HttpConnector):
    # Feeds come from many publishers: one publisher's 429 pauses its own feeds only.
    limits_per_server = True

    def __init__(self, config: RssConfig, **kwargs: Any) -> None:
        super().__init__(config.name, config.base_url, poll_interval=config.poll_interval,
                         timeout=config.timeout,
                         headers={"Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5"},
                         **kwargs)
        self.config = config
        # The cursor key keeps the full URL (unchanged since the first release); nothing else shows it.
        self._queries = {f"feed:{f.url}": f.query or self._shown(f.url) for f in config.feeds}
        self._labels = {f"feed:{f.url}": f"feed {f.query!r} ({self._shown(f.url)})" if f.query
                        else f"feed {self._shown(f.url)}" for f in config.feeds}

    def _shown(self, url: str) -> str:
        """The feed's URL, made absolute against the base URL, as logs and mentions may show it."""
        return public_url(url if "://" in url else str(self.client.base_url.join(url.lstrip("/"))))

    def keys(self) -> list[str]:
        return list(self._queries)

    def describe_key(self, key: str) -> str:
        return self._labels.get(key) or f"feed {self._shown(key.removeprefix('feed:'))}"

    async def fetch(self, key: str, state: Any) -> Fetched:
        url = key.removeprefix("feed:")
        state = dict(state) if isinstance(state, dict) else {}
        headers = {}
        if state.get("etag"):
            headers["If-None-Match"] = state["etag"]
        if state.get("modified"):
            headers["If-Modified-Since"] = state["modified"]
        response = await self.request("GET", url, headers=headers)
        if response.status_code == 304:
            return Fetched([], state)
        parsed = feedparser.parse(response.content)
        if parsed.bozo and not parsed.entries and not parsed.feed.get("title"):
            raise FatalError(f"{self.name}: {self.describe_key(key)} is not an RSS or Atom feed "
                             f"({parsed.get('bozo_exception')})")
        seen = list(state.get("seen") or [])
        known = set(seen)
        feed_lang = parsed.feed.get("language")
        current: list[str] = []
        fresh: list[Native] = []
        for entry in parsed.entries:
            try:
                short = _short(entry_id(entry))
            except SkippableItem:
                fresh.append(Native(dict(entry), self._queries[key], {"lang": feed_lang}))
                continue
            current.append(short)
            if short not in known:
                known.add(short)
                fresh.append(Native(dict(entry), self._queries[key], {"lang": feed_lang}))
        remembered = current + [s for s in seen if s not in set(current)]
        return Fetched(fresh, {"etag": response.headers.get("etag"),
                               "modified": response.headers.get("last-modified"),
                               "seen": remembered[:SEEN_LIMIT]})

    def to_mention(self, native: Native) -> Mention:
        entry = native.item
        native_id = entry_id(entry)
        title = html_to_text(entry.get("title"))
        summary = html_to_text(entry.get("summary"))
        if not title and not summary:
            raise SkippableItem("entry has no title or text")
        text = title if not summary or summary.startswith(title) else f"{title}\n\n{summary}"
        stamp = entry.get("published_parsed") or entry.get("updated_parsed")
        # An undated entry is dated when first seen: that is when it became news to us.
        created = datetime.fromtimestamp(calendar.timegm(stamp), UTC) if stamp else utcnow()
        source_title = (entry.get("source") or {}).get("title") if isinstance(entry.get("source"), dict) else None
        lang = entry.get("language") or native.context.get("lang")
        return Mention.build(
            source=SOURCE, native_id=native_id, text=text, created_at=created, url=entry.get("link"),
            author=self.author(entry.get("author") or source_title),
            lang=str(lang)[:16] if lang else None, query=native.query,
            raw=self.raw({k: v for k, v in entry.items() if isinstance(v, str | int | float)}))

"""Hacker News through the Algolia search API (``search_by_date``), no credentials.

Answers are newest first, paged with ``page``; the cursor is a sweep (see
``connectors.sweep``) over ``created_at_i``. The filter is
``created_at_i>=<watermark>`` rather than ``>``: several items can share a
second, and the ones at the watermark already sent are skipped by id.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from connectors.base import SkippableItem
from connectors.config import SourceConfig
from connectors.http import Fetched, HttpConnector, Native
from connectors.sweep import Sweep
from connectors.text import html_to_text, parse_timestamp
from schemas import Engagement, Mention

SOURCE = "hackernews"
ITEM_URL = "https://news.ycombinator.com/item?id={}"


class HackerNewsConfig(SourceConfig):
    type: Literal["hackernews"]
    base_url: str = "https://hn.algolia.com"
    queries: list[str] = Field(min_length=1)
    tags: str = Field(default="(story,comment)", description="Algolia tags filter")
    hits_per_page: int = Field(default=100, ge=1, le=1000)
    poll_interval: float = Field(default=300.0, gt=0)


class HackerNewsConnector(HttpConnector):
    def __init__(self, config: HackerNewsConfig, **kwargs: Any) -> None:
        super().__init__(config.name, config.base_url, poll_interval=config.poll_interval,
                         timeout=config.timeout, **kwargs)
        self.config = config

    def keys(self) -> list[str]:
        return [f"search:{q}" for q in self.config.queries]

    async def fetch(self, key: str, state: Any) -> Fetched:
        query = key.removeprefix("search:")
        sweep = Sweep.load(state)
        params: dict[str, Any] = {"query": query, "tags": self.config.tags,
                                  "hitsPerPage": self.config.hits_per_page, "page": int(sweep.token or 0)}
        if sweep.since is not None:
            params["numericFilters"] = f"created_at_i>={int(sweep.since)}"
        body = await self.get_json("api/v1/search_by_date", params=params)
        hits = body.get("hits") if isinstance(body, dict) else None
        if not isinstance(hits, list):
            hits = []
        page, pages = int(body.get("page", 0) or 0), int(body.get("nbPages", 0) or 0)
        next_page = str(page + 1) if page + 1 < pages else None
        fresh, more = sweep.step(hits, ident=lambda h: str(h["objectID"]),
                                 mark=lambda h: int(h["created_at_i"]), next_token=next_page)
        return Fetched([Native(h, query) for h in fresh], sweep.dump(), has_more=more)

    def to_mention(self, native: Native) -> Mention:
        hit = native.item
        if not isinstance(hit, dict) or not hit.get("objectID"):
            raise SkippableItem("hit has no objectID")
        tags = hit.get("_tags") or []
        is_comment = "comment" in tags or bool(hit.get("comment_text"))
        if is_comment:
            text = html_to_text(hit.get("comment_text"))
        else:
            text = "\n\n".join(p for p in (hit.get("title") or "", html_to_text(hit.get("story_text"))) if p)
        if not text:
            raise SkippableItem("hit has no title or text")
        created = hit.get("created_at_i")
        return Mention.build(
            source=SOURCE, native_id=str(hit["objectID"]), text=text,
            created_at=parse_timestamp(created if created is not None else hit.get("created_at")),
            url=ITEM_URL.format(hit["objectID"]), author=self.author(hit.get("author")),
            reply_to=str(hit["parent_id"]) if is_comment and hit.get("parent_id") else None,
            engagement=Engagement(likes=hit.get("points"), replies=hit.get("num_comments")),
            query=native.query, raw=self.raw(hit))

"""Mastodon: public hashtag timelines and status search on one instance.

Hashtag timelines are public (no token); status search needs a token on most
instances. Each hashtag or search keeps its own ``min_id``: Mastodon answers
``min_id=X`` with the statuses immediately newer than X, so reading forward
page by page never skips a status, and the ``Link: rel="prev"`` header names
the next ``min_id``. The first run starts at the newest page instead of
reading the whole history of a hashtag.

A status is identified by its ActivityPub ``uri``: the same post seen through
two instances gets the same mention id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, quote, urlsplit

from pydantic import Field, model_validator

from connectors.base import SkippableItem
from connectors.config import SecretSpec, SourceConfig
from connectors.http import Fetched, HttpConnector, Native
from connectors.text import html_to_text, parse_timestamp
from schemas import Engagement, Mention

SOURCE = "mastodon"


class MastodonConfig(SourceConfig):
    secrets: ClassVar[tuple[SecretSpec, ...]] = (SecretSpec("token", required=False),)

    type: Literal["mastodon"]
    base_url: str = Field(default="https://mastodon.social", description="the instance")
    hashtags: list[str] = Field(default_factory=list, description="without '#'")
    searches: list[str] = Field(default_factory=list, description="status search; needs a token")
    token_env: str | None = None
    token_file: Path | None = None
    limit: int = Field(default=40, ge=1, le=40)

    @model_validator(mode="after")
    def _something_to_ask(self) -> MastodonConfig:
        if not self.hashtags and not self.searches:
            raise ValueError("give at least one of 'hashtags' or 'searches'")
        return self

    def missing_credentials(self) -> list[str]:
        missing = super().missing_credentials()
        if self.searches and self.secret("token") is None:
            missing.append(self.token_env or "token_env (status search needs a token)")
        return missing


def _id_key(value: str) -> tuple[int, str]:
    # Mastodon ids are numeric strings of growing length; compare them as numbers.
    return (len(value), value)


def _prev_min_id(link_header: dict[str, dict[str, str]]) -> str | None:
    prev = link_header.get("prev")
    if not prev or "url" not in prev:
        return None
    values = parse_qs(urlsplit(prev["url"]).query).get("min_id")
    return values[0] if values else None


class MastodonConnector(HttpConnector):
    def __init__(self, config: MastodonConfig, **kwargs: Any) -> None:
        token = config.secret("token")
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        super().__init__(config.name, config.base_url, poll_interval=config.poll_interval,
                         timeout=config.timeout, headers=headers, **kwargs)
        self.config = config
        self.credential = config.token_env
        self.host = urlsplit(config.base_url).hostname or config.base_url

    def keys(self) -> list[str]:
        return ([f"tag:{t.lstrip('#')}" for t in self.config.hashtags]
                + [f"search:{q}" for q in self.config.searches])

    async def fetch(self, key: str, state: Any) -> Fetched:
        kind, _, value = key.partition(":")
        min_id = state.get("min_id") if isinstance(state, dict) else None
        params: dict[str, Any] = {"limit": self.config.limit}
        if min_id:
            params["min_id"] = min_id
        if kind == "tag":
            response = await self.request("GET", f"api/v1/timelines/tag/{quote(value, safe='')}", params=params)
            statuses = self.json(response)
            query = f"#{value}"
        else:
            params.update(q=value, type="statuses", resolve="false")
            response = await self.request("GET", "api/v2/search", params=params)
            body = self.json(response)
            statuses = body.get("statuses", []) if isinstance(body, dict) else body
            query = value
        if not isinstance(statuses, list):
            statuses = []
        # Defence in depth: never hand back a status at or below the cursor.
        ids = [str(s["id"]) for s in statuses if isinstance(s, dict) and s.get("id")]
        fresh = [s for s in statuses if not (min_id and isinstance(s, dict) and s.get("id")
                                             and _id_key(str(s["id"])) <= _id_key(min_id))]
        newest = max(ids, key=_id_key) if ids else None
        next_min = _prev_min_id(dict(response.links)) or newest
        if min_id and next_min and _id_key(next_min) < _id_key(min_id):
            next_min = min_id
        return Fetched([Native(s, query) for s in fresh], {"min_id": next_min or min_id},
                       has_more=bool(min_id) and len(statuses) >= self.config.limit)

    def to_mention(self, native: Native) -> Mention:
        status = native.item
        if not isinstance(status, dict):
            raise SkippableItem("status is not a JSON object")
        shown = status.get("reblog") or status
        text = html_to_text(shown.get("content"))
        if shown.get("spoiler_text"):
            text = f"{shown['spoiler_text']}\n\n{text}".strip()
        if not text:
            raise SkippableItem("status has no text (media only)")
        native_id = status.get("uri") or status.get("url")
        if not native_id:
            raise SkippableItem("status has no uri")
        account = status.get("account") or {}
        acct = account.get("acct")
        if acct and "@" not in acct:
            acct = f"{acct}@{self.host}"
        in_reply_to = status.get("in_reply_to_id")
        return Mention.build(
            source=SOURCE, native_id=native_id, text=text,
            created_at=parse_timestamp(status.get("created_at")),
            url=shown.get("url") or shown.get("uri"), author=self.author(acct),
            lang=shown.get("language"),
            reply_to=f"{self.host}:{in_reply_to}" if in_reply_to else None,
            repost_of=status["reblog"].get("uri") if status.get("reblog") else None,
            engagement=Engagement(likes=shown.get("favourites_count"), reposts=shown.get("reblogs_count"),
                                  replies=shown.get("replies_count")),
            query=native.query, raw=self.raw(status))

"""X (Twitter): API v2 recent search with an app bearer token.

Answers are newest first and paged backwards with ``next_token``; ``since_id``
asks only for posts newer than the watermark. The cursor is a sweep (see
``connectors.sweep``) over the post id, which grows with time. X's
``x-rate-limit-remaining``/``x-rate-limit-reset`` headers pause the next call
when the 15-minute window is used up.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from connectors.base import SkippableItem
from connectors.config import SecretSpec, SourceConfig
from connectors.http import BearerConnector, Fetched, Native
from connectors.sweep import Sweep
from connectors.text import parse_timestamp
from schemas import Engagement, Mention

SOURCE = "x"
TWEET_FIELDS = "created_at,lang,author_id,public_metrics,referenced_tweets,conversation_id,note_tweet"


class XConfig(SourceConfig):
    secrets: ClassVar[tuple[SecretSpec, ...]] = (SecretSpec("token"),)

    type: Literal["x"]
    base_url: str = "https://api.x.com"
    queries: list[str] = Field(min_length=1, description="X search query syntax, e.g. '\"myGov\" -is:retweet'")
    max_results: int = Field(default=100, ge=10, le=100)
    token_env: str | None = "EARFUL_X_BEARER_TOKEN"
    token_file: Path | None = None
    # Recent search allows few requests per window on the lower tiers.
    poll_interval: float = Field(default=300.0, gt=0)


class XConnector(BearerConnector):
    config: XConfig

    def keys(self) -> list[str]:
        return [f"search:{q}" for q in self.config.queries]

    async def fetch(self, key: str, state: Any) -> Fetched:
        query = key.removeprefix("search:")
        sweep = Sweep.load(state)
        params: dict[str, Any] = {"query": query, "max_results": self.config.max_results,
                                  "tweet.fields": TWEET_FIELDS, "expansions": "author_id",
                                  "user.fields": "username"}
        if sweep.since is not None:
            params["since_id"] = str(sweep.since)
        if sweep.token:
            params["next_token"] = sweep.token
        body = await self.get_json("2/tweets/search/recent", params=params)
        if not isinstance(body, dict):
            body = {}
        tweets = body.get("data") if isinstance(body.get("data"), list) else []
        users = {u.get("id"): u.get("username") for u in (body.get("includes") or {}).get("users", [])
                 if isinstance(u, dict)}
        next_token = (body.get("meta") or {}).get("next_token")
        fresh, more = sweep.step(tweets, ident=lambda t: str(t["id"]), mark=lambda t: int(t["id"]),
                                 next_token=next_token)
        return Fetched([Native(t, query, {"users": users}) for t in fresh], sweep.dump(), has_more=more)

    def to_mention(self, native: Native) -> Mention:
        tweet = native.item
        if not isinstance(tweet, dict) or not tweet.get("id"):
            raise SkippableItem("post has no id")
        # A long post's ``text`` is cut short; its whole text is in ``note_tweet``. X escapes
        # &, < and > in post text as HTML entities.
        note = tweet.get("note_tweet") if isinstance(tweet.get("note_tweet"), dict) else {}
        text = html.unescape(str(note.get("text") or tweet.get("text") or "")).strip()
        if not text:
            raise SkippableItem("post has no text")
        username = native.context.get("users", {}).get(tweet.get("author_id"))
        refs = {r.get("type"): str(r.get("id")) for r in tweet.get("referenced_tweets") or [] if isinstance(r, dict)}
        metrics = tweet.get("public_metrics") or {}
        return Mention.build(
            source=SOURCE, native_id=str(tweet["id"]), text=text,
            created_at=parse_timestamp(tweet.get("created_at")),
            # x.com/i/web/status/<id> opens the same post without naming its author.
            url=f"https://x.com/{'i/web' if self.pseudonymise.hides or not username else username}"
                f"/status/{tweet['id']}",
            author=self.author(f"@{username}" if username else tweet.get("author_id")),
            lang=tweet.get("lang") if tweet.get("lang") not in (None, "und", "zxx") else None,
            reply_to=refs.get("replied_to"), repost_of=refs.get("retweeted") or refs.get("quoted"),
            engagement=Engagement(likes=metrics.get("like_count"), reposts=metrics.get("retweet_count"),
                                  replies=metrics.get("reply_count"), views=metrics.get("impression_count")),
            query=native.query, raw=self.raw(tweet))

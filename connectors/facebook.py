"""Facebook: comments on the agency's Page posts through the Graph API (Page access token).

One question per Page (``page:<id>``): the Page's most recent posts with their
comments nested, newest first (``/<page>/posts?fields=...,comments.filter(stream)
.order(reverse_chronological)``), so one request covers ``recent_posts`` posts.
``filter(stream)`` lists replies to comments too, each with its ``parent``.
When a post's first page of comments is all new, the rest is read with the
``after`` cursor of ``/<post>/comments`` until the watermark is reached. A busy
post stops after MAX_COMMENT_PAGES pages: its ``after`` cursor is kept in the
cursor (``pending``) and the next poll goes on from there before the sweep ends,
so no comment between that page and the watermark is skipped.

The watermark is the newest comment time delivered (a sweep, see
``connectors.sweep``), across the Page: a new comment on an old post is still
newer than the watermark. Comments on posts older than the ``recent_posts``
newest are not seen; raise it for a Page whose old posts stay busy.

The token travels in the ``Authorization`` header, never in a URL (the Graph
API's own ``paging.next`` links carry it, so they are never followed as is).
Errors come as HTTP 400/403 with a Graph error code::

    190 (OAuthException)           token expired or revoked: FatalError naming the token's env var
    4, 17, 32, 613, 80001          app / user / Page rate limits: RateLimited
    1, 2                           temporary: RetriableError
    other                          FatalError with Facebook's message

The ``X-App-Usage`` / ``X-Page-Usage`` / ``X-Business-Use-Case-Usage`` headers
report how much of the hourly allowance is used; at 100% the next call waits
(``estimated_time_to_regain_access`` minutes when given).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
import orjson
from pydantic import Field

from connectors.base import FatalError, RateLimited, RetriableError, SkippableItem
from connectors.config import SecretSpec, SourceConfig
from connectors.http import MAX_RETRY_AFTER, BearerConnector, Fetched, Native, raise_for_status
from connectors.sweep import Sweep
from connectors.text import parse_timestamp
from schemas import Engagement, Mention

SOURCE = "facebook"
COMMENT_FIELDS = "id,message,created_time,from{id,name},like_count,comment_count,permalink_url,parent{id}"
RATE_CODES = frozenset({4, 17, 32, 613, 80001})
TEMPORARY_CODES = frozenset({1, 2})
TOKEN_CODES = frozenset({102, 190})
#: pages of one post's comments read per poll when many arrived at once (the rest next poll, from ``pending``)
MAX_COMMENT_PAGES = 10


class FacebookConfig(SourceConfig):
    secrets: ClassVar[tuple[SecretSpec, ...]] = (SecretSpec("token"),)

    type: Literal["facebook"]
    base_url: str = "https://graph.facebook.com"
    version: str = Field(default="v21.0", pattern=r"^v\d+\.\d+$")
    pages: list[str] = Field(min_length=1, description="Page ids (or usernames) whose posts' comments to read")
    recent_posts: int = Field(default=25, ge=1, le=100, description="how many of the newest posts to watch")
    comments_per_post: int = Field(default=50, ge=1, le=100)
    token_env: str | None = "EARFUL_FACEBOOK_PAGE_TOKEN"
    token_file: Path | None = None
    poll_interval: float = Field(default=300.0, gt=0)


def _usage_wait(headers: httpx.Headers) -> float | None:
    """Seconds to wait when a usage header says the allowance is used up; None otherwise."""
    worst: float | None = None
    for name in ("x-app-usage", "x-page-usage", "x-ad-account-usage"):
        try:
            usage = orjson.loads(headers.get(name) or "null")
        except orjson.JSONDecodeError:
            continue
        if isinstance(usage, dict) and any(isinstance(v, int | float) and v >= 100 for v in usage.values()):
            worst = max(worst or 0.0, 300.0)
    try:
        business = orjson.loads(headers.get("x-business-use-case-usage") or "null")
    except orjson.JSONDecodeError:
        business = None
    if isinstance(business, dict):
        for entries in business.values():
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                full = any(isinstance(entry.get(k), int | float) and entry[k] >= 100
                           for k in ("call_count", "total_time", "total_cputime"))
                minutes = entry.get("estimated_time_to_regain_access")
                if full or (isinstance(minutes, int | float) and minutes > 0):
                    wait = float(minutes) * 60 if isinstance(minutes, int | float) and minutes > 0 else 300.0
                    worst = max(worst or 0.0, wait)
    return None if worst is None else min(worst, MAX_RETRY_AFTER)


def _graph_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:300].strip()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, str(body)[:300]
    code = error.get("code")
    return (code if isinstance(code, int) else None), str(error.get("message") or "")[:300]


class FacebookConnector(BearerConnector):
    config: FacebookConfig

    def keys(self) -> list[str]:
        return [f"page:{p}" for p in self.config.pages]

    async def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        response = await self.request("GET", f"{self.config.version}/{path}", params=params,
                                      allow=frozenset({400, 403}))
        wait = _usage_wait(response.headers)
        if wait is not None:
            # Say so to the next request; this answer itself is still good when it is a 2xx.
            self._not_before = max(self._not_before, time.monotonic() + wait)
        if response.status_code in (400, 403):
            code, message = _graph_error(response)
            what = f"{self.name}: HTTP {response.status_code} from {response.request.url.host}"
            if code in RATE_CODES:
                raise RateLimited(f"{what}: rate limited (Graph error {code}): {message}",
                                  retry_after=wait if wait is not None else 300.0)
            if code in TEMPORARY_CODES:
                raise RetriableError(f"{what}: temporary Graph error {code}: {message}")
            if code in TOKEN_CODES:
                raise FatalError(f"{what}: Page token refused (Graph error {code}: {message}); "
                                 f"check {self.credential}")
            raise_for_status(response, source=self.name, credential=self.credential)
        body = self.json(response)
        return body if isinstance(body, dict) else {}

    async def fetch(self, key: str, state: Any) -> Fetched:
        sweep = Sweep.load(state)
        pending = state.get("pending") if isinstance(state, dict) else None
        if pending:
            comments, pending = await self._resume(pending, sweep)
        else:
            comments, pending = await self._recent(key.removeprefix("page:"), sweep)
        fresh = sweep.take(comments, ident=lambda c: str(c["id"]), mark=_comment_mark)
        if pending:
            # The sweep stays open: the watermark must not pass the comments still to read.
            return Fetched([Native(c, key) for c in fresh], {**sweep.dump(), "pending": pending}, has_more=True)
        sweep.finish()
        return Fetched([Native(c, key) for c in fresh], sweep.dump())

    async def _recent(self, page_id: str, sweep: Sweep) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The comments of the Page's recent posts, and the busy posts whose rest is left for the next poll."""
        nested = (f"comments.filter(stream).order(reverse_chronological)"
                  f".limit({self.config.comments_per_post}){{{COMMENT_FIELDS}}}")
        body = await self._get(f"{page_id}/posts", {"fields": f"id,permalink_url,{nested}",
                                                    "limit": self.config.recent_posts})
        posts = body.get("data") if isinstance(body.get("data"), list) else []
        comments: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        for post in posts:
            if not isinstance(post, dict):
                continue
            ref = {"id": post.get("id"), "permalink_url": post.get("permalink_url")}
            block = post.get("comments") if isinstance(post.get("comments"), dict) else {}
            found = [c for c in block.get("data") or [] if isinstance(c, dict)]
            after = _continues(block, found, sweep) if sweep.since is not None else None
            if after is not None:
                more, after = await self._older_comments(str(post["id"]), after, sweep)
                found += more
                if after is not None:
                    pending.append({**ref, "after": after})
            comments += [{**c, "_post": ref} for c in found]
        return comments, pending

    async def _resume(self, pending: list[dict[str, Any]], sweep: Sweep,
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Go on reading the busy posts where the last poll stopped."""
        comments: list[dict[str, Any]] = []
        still: list[dict[str, Any]] = []
        for entry in pending:
            ref = {"id": entry.get("id"), "permalink_url": entry.get("permalink_url")}
            more, after = await self._older_comments(str(entry["id"]), str(entry["after"]), sweep)
            comments += [{**c, "_post": ref} for c in more]
            if after is not None:
                still.append({**ref, "after": after})
        return comments, still

    async def _older_comments(self, post_id: str, after: str, sweep: Sweep,
                              ) -> tuple[list[dict[str, Any]], str | None]:
        """A post's comments from ``after`` on while they are new, at most MAX_COMMENT_PAGES pages;
        with the ``after`` cursor to go on from when that many pages were not enough."""
        more: list[dict[str, Any]] = []
        for _ in range(MAX_COMMENT_PAGES):
            block = await self._get(f"{post_id}/comments", {
                "filter": "stream", "order": "reverse_chronological", "fields": COMMENT_FIELDS,
                "limit": self.config.comments_per_post, "after": after})
            page = [c for c in block.get("data") or [] if isinstance(c, dict)]
            more += page
            next_after = _continues(block, page, sweep)
            if next_after is None:
                return more, None
            after = next_after
        return more, after

    def to_mention(self, native: Native) -> Mention:
        comment = native.item
        if not isinstance(comment, dict) or not comment.get("id"):
            raise SkippableItem("comment has no id")
        text = str(comment.get("message") or "").strip()
        if not text:
            raise SkippableItem("comment has no text (a sticker, photo or GIF only)")
        post = comment.get("_post") or {}
        parent = (comment.get("parent") or {}).get("id") if isinstance(comment.get("parent"), dict) else None
        url = comment.get("permalink_url") or (
            f"{post['permalink_url']}?comment_id={comment['id']}" if post.get("permalink_url")
            else f"https://www.facebook.com/{comment['id']}")
        who = comment.get("from") if isinstance(comment.get("from"), dict) else {}
        raw = {k: v for k, v in comment.items() if k != "_post"}
        return Mention.build(
            source=SOURCE, native_id=str(comment["id"]), text=text,
            created_at=parse_timestamp(comment.get("created_time")), url=url,
            author=self.author(who.get("name") or who.get("id")),
            reply_to=parent or post.get("id"),
            engagement=Engagement(likes=comment.get("like_count"), replies=comment.get("comment_count")),
            query=native.query, raw=self.raw(raw))


def _comment_mark(comment: dict[str, Any]) -> int:
    return int(parse_timestamp(comment["created_time"]).timestamp())


def _continues(block: dict[str, Any], page: list[dict[str, Any]], sweep: Sweep) -> str | None:
    """The ``after`` cursor of a post's next page of comments when it may hold new ones; None when done."""
    paging = block.get("paging") or {}
    after = (paging.get("cursors") or {}).get("after")
    if page and after and paging.get("next") and all(_is_new(sweep, c) for c in page):
        return str(after)
    return None


def _is_new(sweep: Sweep, comment: dict[str, Any]) -> bool:
    try:
        return sweep.is_new(str(comment["id"]), _comment_mark(comment))
    except (KeyError, TypeError, ValueError):
        return True

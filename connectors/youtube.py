"""YouTube: comment threads on the agency's channel and videos, and videos found by search (Data API v3).

Three kinds of question, each with its own cursor:

- ``channel:<id>``: ``commentThreads?allThreadsRelatedToChannelId=`` (comments on
  every video of the channel), newest first with ``order=time``;
- ``video:<id>``: ``commentThreads?videoId=`` for one video;
- ``search:<q>``: ``search?type=video&order=date``, each video (title and
  description) a mention; ``publishedAfter`` asks only for newer videos.

All are newest first and paged backwards with ``pageToken``, read forward with a
sweep (``connectors.sweep``) whose watermark is the publication time.

The API key travels in the ``X-goog-api-key`` header, never in the URL, so
request logs cannot show it. Quota: 10,000 units a day by default; a search
costs 100 units, a comment-thread page 1. When the day's quota is used up
YouTube answers 403 ``quotaExceeded`` (a wait, not a broken key) and the
runner asks again later. A video whose comments are turned off (403
``commentsDisabled``) is skipped with a log line; the other questions go on.
Replies beyond the top-level comment are not read (``comments.list`` per
thread would cost a unit per thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, model_validator

from connectors.base import FatalError, RateLimited, SkippableItem
from connectors.config import SecretSpec, SourceConfig
from connectors.http import Fetched, HttpConnector, Native, platform_message, raise_for_status
from connectors.sweep import Sweep
from connectors.text import html_to_text, parse_timestamp
from schemas import Engagement, Mention

SOURCE = "youtube"
#: reasons YouTube gives for "not now" (403/429), as opposed to a refused key
RATE_REASONS = frozenset({"quotaExceeded", "rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded"})
#: reasons that mean the key itself is wrong (YouTube answers some of them with 400)
KEY_REASONS = frozenset({"keyInvalid", "keyExpired", "API_KEY_INVALID", "API_KEY_EXPIRED", "forbidden",
                         "ipRefererBlocked", "accessNotConfigured"})
#: reasons that concern one video or channel only: that key is skipped, the others go on
TARGET_REASONS = {"commentsDisabled": "comments are turned off", "videoNotFound": "no such video",
                  "channelNotFound": "no such channel"}
#: how long to wait when the daily quota is used up (it resets at midnight Pacific time)
QUOTA_WAIT = 3600.0


class YouTubeConfig(SourceConfig):
    secrets: ClassVar[tuple[SecretSpec, ...]] = (SecretSpec("key"),)

    type: Literal["youtube"]
    base_url: str = "https://www.googleapis.com/youtube/v3"
    channels: list[str] = Field(default_factory=list, description="channel ids (UC...) whose comments to read")
    videos: list[str] = Field(default_factory=list, description="video ids whose comments to read")
    searches: list[str] = Field(default_factory=list, description="video search queries")
    region_code: str | None = Field(default=None, description="ISO 3166-1 alpha-2, e.g. AU, for searches")
    max_results: int = Field(default=50, ge=1, le=50)
    key_env: str | None = "EARFUL_YOUTUBE_API_KEY"
    key_file: Path | None = None
    # A search costs 100 of the 10,000 daily units: every 30 minutes is ~4,800 units per query a day.
    poll_interval: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _something_to_ask(self) -> YouTubeConfig:
        if not (self.channels or self.videos or self.searches):
            raise ValueError("give at least one of 'channels', 'videos' or 'searches'")
        return self


def _reasons(response: httpx.Response) -> set[str]:
    try:
        body = response.json()
    except ValueError:
        return set()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return set()
    found = {str(e.get("reason")) for e in error.get("errors") or [] if isinstance(e, dict)}
    found |= {str(d.get("reason")) for d in error.get("details") or [] if isinstance(d, dict) and d.get("reason")}
    return found


class YouTubeConnector(HttpConnector):
    def __init__(self, config: YouTubeConfig, **kwargs: Any) -> None:
        key = config.secret("key")
        headers = {"X-goog-api-key": key.get_secret_value()} if key else {}
        super().__init__(config.name, config.base_url, poll_interval=config.poll_interval,
                         timeout=config.timeout, headers=headers, **kwargs)
        self.config = config
        self.credential = config.key_env or (str(config.key_file) if config.key_file else None)

    def keys(self) -> list[str]:
        return ([f"channel:{c}" for c in self.config.channels] + [f"video:{v}" for v in self.config.videos]
                + [f"search:{q}" for q in self.config.searches])

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        response = await self.request("GET", path, params=params, allow=frozenset({400, 403}))
        if response.status_code in (400, 403):
            reasons = _reasons(response)
            what = f"{self.name}: HTTP {response.status_code} from {response.request.url.host}"
            if reasons & RATE_REASONS:
                raise RateLimited(f"{what}: quota or rate limit used up ({', '.join(sorted(reasons))})",
                                  retry_after=QUOTA_WAIT if "quotaExceeded" in reasons else None)
            if reasons & TARGET_REASONS.keys():
                reason = min(reasons & TARGET_REASONS.keys())
                raise FatalError(f"{what}: {TARGET_REASONS[reason]} ({reason})")
            if reasons & KEY_REASONS or response.status_code == 403:
                raise FatalError(f"{what}: key refused ({platform_message(response)}); check {self.credential}")
            raise_for_status(response, source=self.name, credential=self.credential)
        body = self.json(response)
        return body if isinstance(body, dict) else {}

    async def fetch(self, key: str, state: Any) -> Fetched:
        kind, _, value = key.partition(":")
        sweep = Sweep.load(state)
        params: dict[str, Any] = {"part": "snippet", "maxResults": self.config.max_results}
        if sweep.token:
            params["pageToken"] = sweep.token
        if kind == "search":
            params.update(q=value, type="video", order="date")
            if self.config.region_code:
                params["regionCode"] = self.config.region_code
            if sweep.since is not None:
                # Seconds resolution; items at the watermark itself are filtered by the sweep's edge.
                params["publishedAfter"] = parse_timestamp(int(sweep.since)).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = await self._get("search", params)
            ident, mark = _search_ident, _video_mark
        else:
            params.update(order="time", textFormat="plainText")
            params["allThreadsRelatedToChannelId" if kind == "channel" else "videoId"] = value
            body = await self._get("commentThreads", params)
            ident, mark = _thread_id, _thread_mark
        items = body.get("items") if isinstance(body.get("items"), list) else []
        fresh, more = sweep.step(items, ident=ident, mark=mark, next_token=body.get("nextPageToken"))
        query = value if kind == "search" else key
        return Fetched([Native(item, query, {"kind": kind}) for item in fresh], sweep.dump(), has_more=more)

    def to_mention(self, native: Native) -> Mention:
        if native.context.get("kind") == "search":
            return self._video(native)
        return self._comment(native)

    def _comment(self, native: Native) -> Mention:
        thread = native.item
        snippet = thread.get("snippet") if isinstance(thread, dict) else None
        top = (snippet or {}).get("topLevelComment") if isinstance(snippet, dict) else None
        comment = top.get("snippet") if isinstance(top, dict) else None
        if not isinstance(comment, dict) or not top.get("id"):
            raise SkippableItem("comment thread has no top-level comment")
        text = str(comment.get("textOriginal") or html_to_text(comment.get("textDisplay"))).strip()
        if not text:
            raise SkippableItem("comment has no text")
        video = comment.get("videoId") or snippet.get("videoId")
        url = (f"https://www.youtube.com/watch?v={video}&lc={top['id']}" if video
               else f"https://www.youtube.com/channel/{snippet.get('channelId')}")
        author = (comment.get("authorChannelId") or {}).get("value") if isinstance(
            comment.get("authorChannelId"), dict) else None
        return Mention.build(
            source=SOURCE, native_id=str(top["id"]), text=text,
            created_at=parse_timestamp(comment.get("publishedAt")), url=url,
            author=self.author(comment.get("authorDisplayName") or author),
            reply_to=f"video:{video}" if video else None,
            engagement=Engagement(likes=comment.get("likeCount"), replies=snippet.get("totalReplyCount")),
            query=native.query, raw=self.raw(thread))

    def _video(self, native: Native) -> Mention:
        result = native.item
        video = _video_id(result) if isinstance(result, dict) else None
        snippet = result.get("snippet") if isinstance(result, dict) else None
        if not video or not isinstance(snippet, dict):
            raise SkippableItem("search result has no video id or snippet")
        parts = (html_to_text(snippet.get("title")), html_to_text(snippet.get("description")))
        text = "\n\n".join(p for p in parts if p.strip())
        if not text:
            raise SkippableItem("video has no title or description")
        return Mention.build(
            source=SOURCE, native_id=f"video:{video}", text=text,
            created_at=parse_timestamp(snippet.get("publishedAt")),
            url=f"https://www.youtube.com/watch?v={video}",
            author=self.author(snippet.get("channelTitle") or snippet.get("channelId")),
            query=native.query, raw=self.raw(result))


def _thread_id(thread: Any) -> str:
    return str(thread["snippet"]["topLevelComment"]["id"])


def _thread_mark(thread: Any) -> int:
    return int(parse_timestamp(thread["snippet"]["topLevelComment"]["snippet"]["publishedAt"]).timestamp())


def _video_id(result: Any) -> str | None:
    ident = result.get("id")
    return str(ident.get("videoId")) if isinstance(ident, dict) and ident.get("videoId") else None


def _search_ident(result: Any) -> str:
    return str(result["id"]["videoId"])


def _video_mark(result: Any) -> int:
    return int(parse_timestamp(result["snippet"]["publishedAt"]).timestamp())

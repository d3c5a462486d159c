"""Reddit: search and subreddit ``new`` listings through the OAuth API (client credentials).

The app's client id and secret buy a bearer token (``/api/v1/access_token``,
renewed before it expires and once more if the API says 401). Listings are
read forward with ``before=<fullname of the newest post seen>``, one page at a
time; Reddit's ``x-ratelimit-*`` headers pause the next call when the window is
used up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import Field, model_validator

from connectors.base import FatalError, SkippableItem
from connectors.config import SecretSpec, SourceConfig
from connectors.http import Fetched, HttpConnector, Native, raise_for_status
from connectors.text import html_to_text, parse_timestamp
from schemas import Engagement, Mention

SOURCE = "reddit"
SITE = "https://www.reddit.com"


class RedditConfig(SourceConfig):
    secrets: ClassVar[tuple[SecretSpec, ...]] = (SecretSpec("client_id"), SecretSpec("client_secret"))

    type: Literal["reddit"]
    base_url: str = "https://oauth.reddit.com"
    auth_url: str = "https://www.reddit.com"
    searches: list[str] = Field(default_factory=list)
    subreddits: list[str] = Field(default_factory=list, description="without 'r/'")
    limit: int = Field(default=100, ge=1, le=100)
    # Reddit asks every client for a unique, descriptive User-Agent.
    user_agent: str = "server:earful-listening:0.1 (by the agency's social listening team)"
    client_id_env: str | None = "EARFUL_REDDIT_CLIENT_ID"
    client_id_file: Path | None = None
    client_secret_env: str | None = "EARFUL_REDDIT_CLIENT_SECRET"
    client_secret_file: Path | None = None

    @model_validator(mode="after")
    def _something_to_ask(self) -> RedditConfig:
        if not self.searches and not self.subreddits:
            raise ValueError("give at least one of 'searches' or 'subreddits'")
        return self


def _age(fullname: str) -> int:
    # Fullnames are "t3_" + a base-36 counter: bigger is newer.
    try:
        return int(fullname.rsplit("_", 1)[-1], 36)
    except ValueError:
        return -1


class RedditConnector(HttpConnector):
    def __init__(self, config: RedditConfig, **kwargs: Any) -> None:
        super().__init__(config.name, config.base_url, poll_interval=config.poll_interval,
                         timeout=config.timeout, headers={"User-Agent": config.user_agent}, **kwargs)
        self.config = config
        self.credential = f"{config.client_id_env} and {config.client_secret_env}"
        self._token: str | None = None
        self._token_until = 0.0

    async def prepare(self) -> None:
        if self._token is None or time.monotonic() >= self._token_until:
            await self._authenticate()

    async def _authenticate(self) -> None:
        client_id, secret = self.config.secret("client_id"), self.config.secret("client_secret")
        if client_id is None or secret is None:
            raise FatalError(f"{self.name}: no Reddit app credentials; set {self.credential}")
        response = await self.request(
            "POST", f"{self.config.auth_url.rstrip('/')}/api/v1/access_token",
            auth=(client_id.get_secret_value(), secret.get_secret_value()),
            data={"grant_type": "client_credentials"})
        body = self.json(response)
        if not isinstance(body, dict) or not body.get("access_token"):
            # Reddit answers bad credentials with 200 {"error": "invalid_grant"} on this endpoint.
            raise FatalError(f"{self.name}: Reddit gave no token ({body.get('error') if isinstance(body, dict) else body}); "
                             f"check {self.credential}")
        self._token = str(body["access_token"])
        # Renew a minute early so a poll never starts with a token about to lapse.
        self._token_until = time.monotonic() + max(float(body.get("expires_in", 3600)) - 60, 30)

    def keys(self) -> list[str]:
        return [f"search:{q}" for q in self.config.searches] + [f"r:{s}" for s in self.config.subreddits]

    async def _listing(self, path: str, params: dict[str, Any]) -> Any:
        for attempt in (1, 2):
            response = await self.request("GET", path, params=params, allow=frozenset({401}),
                                          headers={"Authorization": f"Bearer {self._token}"})
            if response.status_code == 401 and attempt == 1:
                await self._authenticate()
                continue
            raise_for_status(response, source=self.name, credential=self.credential)
            return self.json(response)
        return None

    async def fetch(self, key: str, state: Any) -> Fetched:
        kind, _, value = key.partition(":")
        before = state.get("before") if isinstance(state, dict) else None
        params: dict[str, Any] = {"limit": self.config.limit, "raw_json": 1}
        if before:
            params["before"] = before
        if kind == "search":
            params.update(q=value, sort="new", type="link")
            body = await self._listing("search", params)
            query = value
        else:
            body = await self._listing(f"r/{quote(value, safe='')}/new", params)
            query = f"r/{value}"
        data = body.get("data") if isinstance(body, dict) else None
        children = data.get("children") if isinstance(data, dict) else None
        if not isinstance(children, list):
            children = []
        names = [str(c["data"]["name"]) for c in children
                 if isinstance(c, dict) and isinstance(c.get("data"), dict) and c["data"].get("name")]
        fresh = [c for c in children if not (before and isinstance(c, dict) and isinstance(c.get("data"), dict)
                                             and _age(str(c["data"].get("name", ""))) <= _age(before))]
        newest = max(names + ([before] if before else []), key=_age, default=None)
        return Fetched([Native(c, query) for c in fresh], {"before": newest},
                       has_more=bool(before) and len(children) >= self.config.limit)

    def to_mention(self, native: Native) -> Mention:
        thing = native.item
        data = thing.get("data") if isinstance(thing, dict) else None
        if not isinstance(data, dict) or not data.get("name"):
            raise SkippableItem("listing child has no data.name")
        kind = thing.get("kind")
        if kind == "t1":
            text = html_to_text(data.get("body"))
        else:
            text = "\n\n".join(p for p in (data.get("title") or "", data.get("selftext") or "") if p.strip())
        if not text.strip():
            raise SkippableItem("post has no title or text")
        permalink = data.get("permalink")
        author = data.get("author")
        return Mention.build(
            source=SOURCE, native_id=str(data["name"]), text=text,
            created_at=parse_timestamp(data.get("created_utc")),
            url=f"{SITE}{permalink}" if permalink else data.get("url"),
            author=self.author(None if author in (None, "[deleted]") else f"u/{author}"),
            reply_to=data.get("parent_id") if kind == "t1" else None,
            repost_of=data.get("crosspost_parent"),
            engagement=Engagement(likes=max(int(data.get("score") or 0), 0), replies=data.get("num_comments")),
            query=native.query, raw=self.raw(data))

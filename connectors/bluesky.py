"""Bluesky: ``app.bsky.feed.searchPosts`` (AT Protocol).

Without credentials the public AppView answers; with an app password the
connector opens a session (``com.atproto.server.createSession``) on the PDS and
searches through it, renewing the session when the access token expires.

Results are newest first and paged backwards with ``cursor``; the cursor is a
sweep (see ``connectors.sweep``) over the post's sort time, and ``since`` asks
the server for posts at or after the watermark (inclusive, so posts at the
watermark already sent are skipped by uri).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from connectors.base import FatalError, SkippableItem
from connectors.config import SecretSpec, SourceConfig
from connectors.http import Fetched, HttpConnector, Native, raise_for_status
from connectors.sweep import Sweep
from connectors.text import iso_mark, parse_timestamp
from schemas import Engagement, Mention

SOURCE = "bluesky"
_EXPIRED = {"ExpiredToken", "InvalidToken"}


class BlueskyConfig(SourceConfig):
    secrets: ClassVar[tuple[SecretSpec, ...]] = (SecretSpec("identifier", required=False),
                                                 SecretSpec("password", required=False))

    type: Literal["bluesky"]
    base_url: str = Field(default="https://public.api.bsky.app", description="AppView used without a session")
    pds_url: str = Field(default="https://bsky.social", description="where the session is opened and searched")
    queries: list[str] = Field(min_length=1)
    lang: str | None = Field(default=None, description="only posts in this language")
    limit: int = Field(default=100, ge=1, le=100)
    identifier_env: str | None = None
    identifier_file: Path | None = None
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> BlueskyConfig:
        if bool(self.identifier_env or self.identifier_file) != bool(self.password_env or self.password_file):
            raise ValueError("a session needs both identifier_env/_file and password_env/_file")
        return self

    def missing_credentials(self) -> list[str]:
        if not (self.identifier_env or self.identifier_file):
            return []  # public AppView
        return [f"{s.field}: {getattr(self, f'{s.field}_env', None) or getattr(self, f'{s.field}_file', None)}"
                for s in self.secrets if self.secret(s.field) is None]


def _sort_mark(post: dict[str, Any]) -> str:
    # The AppView sorts and filters by "sortAt", the earlier of createdAt and indexedAt
    # (a backdated createdAt must not hide a post from the sweep).
    record = post.get("record") or {}
    times = [parse_timestamp(t) for t in (record.get("createdAt"), post.get("indexedAt")) if t]
    if not times:
        raise ValueError("post has no timestamp")
    return iso_mark(min(times))


class BlueskyConnector(HttpConnector):
    def __init__(self, config: BlueskyConfig, **kwargs: Any) -> None:
        self.config = config
        self._session_wanted = bool(config.identifier_env or config.identifier_file)
        base = config.pds_url if self._session_wanted else config.base_url
        super().__init__(config.name, base, poll_interval=config.poll_interval, timeout=config.timeout, **kwargs)
        self.credential = config.password_env or (str(config.password_file) if config.password_file else None)
        self._access: str | None = None

    async def prepare(self) -> None:
        if self._session_wanted and self._access is None:
            await self._login()

    async def _login(self) -> None:
        identifier, password = self.config.secret("identifier"), self.config.secret("password")
        if identifier is None or password is None:
            raise FatalError(f"{self.name}: no Bluesky app password; set {self.config.identifier_env} "
                             f"and {self.config.password_env}")
        response = await self.request(
            "POST", "xrpc/com.atproto.server.createSession", allow=frozenset({400}),
            json={"identifier": identifier.get_secret_value(), "password": password.get_secret_value()})
        if response.status_code == 400:
            # The PDS answers a wrong app password with 400 AuthenticationRequired or 401.
            raise FatalError(f"{self.name}: Bluesky refused the session ({self._error(response)}); "
                             f"check {self.config.identifier_env} and {self.config.password_env}")
        body = self.json(response)
        if not isinstance(body, dict) or not body.get("accessJwt"):
            raise FatalError(f"{self.name}: createSession answered without an access token")
        self._access = str(body["accessJwt"])

    @staticmethod
    def _error(response: Any) -> str:
        try:
            body = response.json()
        except ValueError:
            return f"HTTP {response.status_code}"
        return str(body.get("error") or body.get("message") or response.status_code) if isinstance(body, dict) \
            else f"HTTP {response.status_code}"

    def keys(self) -> list[str]:
        return [f"search:{q}" for q in self.config.queries]

    async def _search(self, params: dict[str, Any]) -> Any:
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._access}"} if self._access else {}
            response = await self.request("GET", "xrpc/app.bsky.feed.searchPosts", params=params,
                                          headers=headers, allow=frozenset({400, 401}))
            if response.status_code in (400, 401):
                expired = self._error(response) in _EXPIRED or response.status_code == 401
                if self._access and expired and attempt == 1:
                    # Access tokens live for hours; renew once, then give up loudly.
                    self._access = None
                    await self._login()
                    continue
                raise_for_status(response, source=self.name, credential=self.credential
                                 or "the Bluesky app password (identifier_env/password_env)")
            return self.json(response)
        raise FatalError(f"{self.name}: session renewed but still refused; check {self.credential}")

    async def fetch(self, key: str, state: Any) -> Fetched:
        query = key.removeprefix("search:")
        sweep = Sweep.load(state)
        params: dict[str, Any] = {"q": query, "sort": "latest", "limit": self.config.limit}
        if self.config.lang:
            params["lang"] = self.config.lang
        if sweep.since is not None:
            params["since"] = str(sweep.since)
        if sweep.token:
            params["cursor"] = sweep.token
        body = await self._search(params)
        posts = body.get("posts") if isinstance(body, dict) else None
        if not isinstance(posts, list):
            posts = []
        # searchPosts may answer a short page that still has a cursor: follow it until none or an empty page.
        next_token = body.get("cursor") if posts else None
        fresh, more = sweep.step(posts, ident=lambda p: str(p["uri"]), mark=_sort_mark, next_token=next_token)
        return Fetched([Native(p, query) for p in fresh], sweep.dump(), has_more=more)

    def to_mention(self, native: Native) -> Mention:
        post = native.item
        if not isinstance(post, dict) or not post.get("uri"):
            raise SkippableItem("post has no uri")
        record = post.get("record") or {}
        text = str(record.get("text") or "").strip()
        if not text:
            raise SkippableItem("post has no text")
        author = post.get("author") or {}
        handle = author.get("handle") or author.get("did")
        rkey = str(post["uri"]).rsplit("/", 1)[-1]
        # bsky.app opens a post by its author's DID (at://<did>/app.bsky.feed.post/<rkey>) as well as
        # by handle: with pseudonymous authors the link names the DID, which the post's id holds anyway.
        repo = str(post["uri"]).removeprefix("at://").split("/", 1)[0]
        if self.pseudonymise.hides:  # no handle, even where the post's id names one
            profile = repo if repo.startswith("did:") else author.get("did")
        else:
            profile = author.get("handle") or author.get("did")
        langs = record.get("langs") or []
        parent = ((record.get("reply") or {}).get("parent") or {}).get("uri")
        return Mention.build(
            source=SOURCE, native_id=str(post["uri"]), text=text,
            created_at=parse_timestamp(record.get("createdAt") or post.get("indexedAt")),
            url=f"https://bsky.app/profile/{profile}/post/{rkey}" if profile else None,
            author=self.author(handle), lang=str(langs[0])[:16] if langs else None, reply_to=parent,
            engagement=Engagement(likes=post.get("likeCount"), reposts=post.get("repostCount"),
                                  replies=post.get("replyCount")),
            query=native.query, raw=self.raw(post))

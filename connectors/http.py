"""HTTP plumbing shared by every live connector: one client, one status-to-error mapping.

What a response becomes::

    network error, timeout        RetriableError (the runner backs off with jitter)
    redirect loop, body that      FatalError: that key is skipped this poll and asked again
      does not decode             on the next (asking again at once would not help)
    429                           RateLimited(retry_after from Retry-After or the rate headers)
    5xx                           RetriableError(retry_after from Retry-After when given)
    401, 403                      FatalError naming the credential (env var) to check
    other 4xx                     FatalError with the platform's own message
    2xx with remaining == 0       returned; the next request waits for the reset first

A live connector asks a platform one or more questions ("keys": a hashtag, a
search query, a feed) and keeps one cursor per key. ``HttpConnector.poll``
walks the keys. A key that fails (a feed's host down, a video with comments
turned off) is logged and skipped, its cursor unchanged, and the other keys go
on; the poll fails only when every key failed. A rate limit is the platform's,
shared by every key: half-way, it delivers what was already fetched with the
cursors of the keys that were read (nothing fetched is thrown away) and the
runner waits as the platform said; the next poll starts at the key it stopped at.
RSS is the exception (``limits_per_server``): feeds come from many publishers,
and one publisher's 429 pauses only the feeds on its server.
Waits are at least MIN_RETRY_AFTER: "Retry-After: 0" or a reset already past
must not turn into a tight loop.

A URL may carry a secret in its user info or query string (a feed's
``?apiKey=``): our logs and mentions show ``public_url`` (scheme, host and path)
instead. The request lines httpx itself logs at INFO show scheme and host only
(``streams.redaction``, shared with alert delivery, whose webhook paths are secrets).
"""

from __future__ import annotations

import abc
import email.utils
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from pydantic import SecretStr

from connectors.base import (
    Connector,
    ConnectorError,
    Cursor,
    FatalError,
    Page,
    RateLimited,
    RejectedItem,
    RetriableError,
)
from connectors.text import Pseudonymiser
from schemas import Mention
from streams.redaction import install_log_filter

log = logging.getLogger(__name__)

USER_AGENT = "earful/0.1 (social listening for a public agency)"
#: a platform that says "wait" for longer than this is treated as "wait this long, then ask again"
MAX_RETRY_AFTER = 3600.0
#: a platform that says "wait 0 s" (or a reset already past) is asked again after this long, not at once
MIN_RETRY_AFTER = 1.0


def _bounded(seconds: float) -> float:
    return min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def public_url(url: str) -> str:
    """The URL as logs and mentions may show it: scheme, host and path, without user info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


install_log_filter()


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def _seconds_until(value: str | None, now: float) -> float | None:
    """A reset given as seconds-from-now, epoch seconds or an HTTP/ISO date, as seconds from ``now``."""
    if value is None or not value.strip():
        return None
    number = _number(value)
    if number is not None:
        # Reddit sends seconds left in the window; X and GitHub-style APIs send epoch seconds.
        return max(number - now, 0.0) if number > 1e9 else max(number, 0.0)
    text = value.strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait before asking again, from Retry-After or the platform's rate-limit reset."""
    now = time.time() if now is None else now
    waited = _seconds_until(headers.get("retry-after"), now)
    if waited is not None:
        return _bounded(waited)
    reset = reset_after(headers, now)
    return None if reset is None else _bounded(reset)


def reset_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds until the rate-limit window resets (x-ratelimit-reset, X's x-rate-limit-reset)."""
    now = time.time() if now is None else now
    for name in ("x-ratelimit-reset", "x-rate-limit-reset", "ratelimit-reset"):
        seconds = _seconds_until(headers.get(name), now)
        if seconds is not None:
            return seconds
    return None


def exhausted_for(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """When the window is used up (remaining == 0), seconds until it resets; otherwise None."""
    for name in ("x-ratelimit-remaining", "x-rate-limit-remaining", "ratelimit-remaining"):
        remaining = _number(headers.get(name))
        if remaining is not None:
            if remaining >= 1:
                return None
            reset = reset_after(headers, now)
            return _bounded(reset if reset is not None else 60.0)
    return None


def platform_message(response: httpx.Response, limit: int = 300) -> str:
    """The platform's own error text, short, for a log line (never the request, which may hold a token)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:limit].strip()
    if isinstance(body, dict):
        for key in ("error_description", "message", "error", "detail", "title", "errors"):
            if key in body and body[key]:
                value = body[key]
                if isinstance(value, dict):
                    value = value.get("message", value)
                return str(value)[:limit]
    return str(body)[:limit]


def raise_for_status(response: httpx.Response, *, source: str, credential: str | None = None) -> None:
    """Map a response's status to the connector error the runner acts on."""
    status = response.status_code
    if status < 400:
        return
    what = f"{source}: HTTP {status} from {response.request.url.host}"
    detail = platform_message(response)
    if status == 429:
        raise RateLimited(f"{what}: rate limited", retry_after=retry_after(response.headers))
    if status >= 500:
        raise RetriableError(f"{what}: {detail or 'server error'}", retry_after=_retry_after_only(response))
    if status in (401, 403):
        hint = f"; check {credential}" if credential else ""
        raise FatalError(f"{what}: not authorised ({detail or 'no detail'}){hint}")
    raise FatalError(f"{what}: {detail or 'request refused'}")


def _retry_after_only(response: httpx.Response) -> float | None:
    value = _seconds_until(response.headers.get("retry-after"), time.time())
    return None if value is None else _bounded(value)


def _has_request(exc: httpx.RequestError) -> bool:
    try:
        exc.request  # noqa: B018 - httpx raises when the error has no request
    except RuntimeError:
        return False
    return True


@dataclass
class Native:
    """A native item and the question that found it (the Mention's ``query``)."""

    item: Any
    query: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fetched:
    """What one key's request returned: native items, the key's next cursor, whether more is waiting."""

    items: list[Native]
    state: Any
    has_more: bool = False


class HttpConnector(Connector):
    """A connector that asks an HTTP API one question per key and keeps a cursor per key."""

    #: the env var (or secret file) to name when the platform says "not authorised"
    credential: str | None = None
    #: a rate limit is one server's, not the whole source's (RSS: each publisher has its own):
    #: a key whose server asked for a pause is skipped until it ends, and the other keys go on
    limits_per_server = False

    def __init__(self, name: str, base_url: str, *, poll_interval: float = 60.0, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None, author_key: SecretStr | None = None,
                 keep_raw: bool = False, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.poll_interval = poll_interval
        self.keep_raw = keep_raw
        self.pseudonymise = Pseudonymiser(author_key)
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/" if base_url else "", timeout=timeout, transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
            follow_redirects=True)
        self._not_before = 0.0
        self._server_not_before: dict[str, float] = {}  # with limits_per_server: server -> end of its pause
        self._resume_at: str | None = None  # the key a rate limit stopped the last poll at

    # -- requests -------------------------------------------------------------------------

    async def request(self, method: str, url: str, *, credential: str | None = None,
                      allow: frozenset[int] = frozenset(), **kwargs: Any) -> httpx.Response:
        """Send one request; map failures to connector errors; remember an exhausted rate window.

        Statuses in ``allow`` come back to the caller (e.g. an expired session it can renew).
        """
        server = self._server(url)
        wait = max(self._not_before, self._server_not_before.get(server, 0.0)) - time.monotonic()
        if wait > 0:
            whose = f"{server}'s" if self.limits_per_server else "the"
            raise RateLimited(f"{self.name}: {whose} rate-limit window is used up", retry_after=_bounded(wait))
        try:
            # Relative to the configured base URL (which tests point at a local server).
            response = await self.client.request(method, url if "://" in url else url.lstrip("/"), **kwargs)
        except httpx.TransportError as exc:
            host = exc.request.url.host if _has_request(exc) else self.client.base_url.host
            raise RetriableError(f"{self.name}: {type(exc).__name__} talking to {host}: {exc}") from None
        except httpx.RequestError as exc:
            # A redirect loop (TooManyRedirects) or a body that is not what its Content-Encoding
            # says (DecodingError): the server answered, wrongly, and will likely answer the same
            # way again. It is that key's fault, not the source's: poll skips the key and names
            # it, the other keys go on, and the key is asked again on the next poll.
            host = exc.request.url.host if _has_request(exc) else self.client.base_url.host
            raise FatalError(f"{self.name}: {type(exc).__name__} from {host}: {exc}") from None
        if response.status_code not in allow:
            try:
                raise_for_status(response, source=self.name, credential=credential or self.credential)
            except RateLimited as exc:
                if self.limits_per_server:
                    pause = exc.retry_after if exc.retry_after is not None else self.poll_interval
                    self._server_not_before[server] = time.monotonic() + max(pause, MIN_RETRY_AFTER)
                raise
        exhausted = exhausted_for(response.headers)
        if exhausted is not None:
            if self.limits_per_server:
                self._server_not_before[server] = time.monotonic() + exhausted
            else:
                self._not_before = time.monotonic() + exhausted
        return response

    def _server(self, url: str) -> str:
        """Host and port a request for ``url`` goes to."""
        target = httpx.URL(url) if "://" in url else self.client.base_url
        return target.netloc.decode("ascii", "replace")

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        response = await self.request("GET", url, **kwargs)
        return self.json(response)

    def json(self, response: httpx.Response) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            # A proxy's HTML error page or a truncated answer: the next poll usually works.
            raise RetriableError(f"{self.name}: unreadable JSON from {response.url.host}: {exc}") from None

    # -- polling --------------------------------------------------------------------------

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """The questions this source asks, each with its own cursor (e.g. ``tag:ATO``)."""

    @abc.abstractmethod
    async def fetch(self, key: str, state: Any) -> Fetched:
        """Ask one question since ``state`` (None on the first run)."""

    async def prepare(self) -> None:
        """Before a poll: sign in when a session is needed."""

    def describe_key(self, key: str) -> str:
        """The key as a log line may show it (a connector whose keys hold secrets hides them)."""
        return key

    async def poll(self, cursor: Cursor) -> Page:
        """Ask every key once since its cursor; skip (and log) a key that fails, keeping its cursor.

        Raises when the platform's rate limit is met before anything was read, or
        when every key failed (the error of one of them, a retriable one first).
        """
        await self.prepare()
        before = dict(cursor or {})
        states = dict(before)
        mentions: dict[str, Mention] = {}
        rejected: list[RejectedItem] = []
        has_more = False
        failed: dict[str, ConnectorError] = {}
        keys = self._in_turn(self.keys())
        for key in keys:
            try:
                fetched = await self.fetch(key, states.get(key))
            except RateLimited as exc:
                if self.limits_per_server:
                    failed[key] = exc  # that server's pause; keys on other servers go on
                    continue
                self._resume_at = key
                if mentions or rejected or states != before:
                    return Page(list(mentions.values()), states, rejected=rejected, rate_limited=exc,
                                skipped=self._skipped(failed))
                for part, why in self._skipped(failed).items():  # no page to carry them: said here
                    log.warning("%s: skipped %s this poll: %s", self.name, part, why)
                raise
            except (FatalError, RetriableError) as exc:
                failed[key] = exc
                continue
            found, bad = self.map_items(fetched.items)
            for mention in found:
                mentions.setdefault(mention.id, mention)
            rejected.extend(bad)
            states[key] = fetched.state
            has_more = has_more or fetched.has_more
        self._resume_at = None
        if keys and len(failed) == len(keys):
            raise _soonest_retriable(list(failed.values()))
        return Page(list(mentions.values()), states, rejected=rejected, has_more=has_more,
                    skipped=self._skipped(failed))

    def _in_turn(self, keys: list[str]) -> list[str]:
        """The keys, starting at the one a rate limit stopped the last poll at (so the last keys get a turn)."""
        if self._resume_at in keys:
            start = keys.index(self._resume_at)
            return keys[start:] + keys[:start]
        return keys

    def _skipped(self, failed: Mapping[str, ConnectorError]) -> dict[str, str]:
        """The keys that failed this poll, as the page reports them (the runner logs them)."""
        return {self.describe_key(key): str(exc).removeprefix(f"{self.name}: ") for key, exc in failed.items()}

    def describe(self, item: Any) -> str:
        return super().describe(item.item if isinstance(item, Native) else item)

    def author(self, handle: str | None) -> str | None:
        return self.pseudonymise(handle)

    def raw(self, item: Any) -> dict[str, Any] | None:
        return item if self.keep_raw and isinstance(item, dict) else None

    async def aclose(self) -> None:
        await self.client.aclose()


def _soonest_retriable(errors: list[ConnectorError]) -> ConnectorError:
    """The error to raise when every key failed: a retriable one (the runner asks again soon)
    before a fatal one, and of those the one that may be asked again soonest: one publisher's
    hour-long pause must not hold up another's feed that only timed out."""
    retriable = [e for e in errors if isinstance(e, RetriableError)]
    if not retriable:
        return errors[0]
    return min(retriable, key=lambda e: -1.0 if e.retry_after is None else e.retry_after)


class BearerConfig(Protocol):
    """What a bearer-token connector reads of its source's config (XConfig, FacebookConfig)."""

    name: str
    base_url: str
    poll_interval: float
    timeout: float

    def bearer(self, field: str = "token") -> tuple[dict[str, str], str | None]: ...


class BearerConnector(HttpConnector):
    """An HTTP connector authorised by the bearer token of its config's ``token`` secret
    (X, Facebook): the config says the base URL, poll interval and timeout."""

    def __init__(self, config: BearerConfig, **kwargs: Any) -> None:
        headers, credential = config.bearer()
        super().__init__(config.name, config.base_url, poll_interval=config.poll_interval,
                         timeout=config.timeout, headers=headers, **kwargs)
        self.config = config
        self.credential = credential

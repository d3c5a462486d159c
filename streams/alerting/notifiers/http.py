"""The one way notifiers POST: timeouts, status codes mapped to delivery errors, URLs redacted.

httpx logs every request with its full URL at INFO; for a webhook the URL is the credential,
so ``streams.redaction``'s filter rewrites URLs to scheme and host before any handler sees them.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx
from pydantic import SecretStr

from streams.alerting.notifiers.errors import PermanentDeliveryError, RetriableDeliveryError
from streams.redaction import install_log_filter, redact_url

__all__ = ["HTTP_TRY_STEPS", "dumps", "post"]

#: one POST is cut off after this many times its timeout (pool, connect, write, read)
HTTP_TRY_STEPS = 4


install_log_filter()


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the receiver asked us to wait: None if it did not say, or said nonsense ("nan").
    The dispatcher caps what it honours (a receiver may ask for ten years)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, response.headers.get("date"))
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _seconds_until(when_text: str, date_text: str | None) -> float | None:
    try:
        when = parsedate_to_datetime(when_text)
        now = parsedate_to_datetime(date_text) if date_text else None
    except (TypeError, ValueError):
        return None
    if now is None or (when.tzinfo is None) != (now.tzinfo is None):
        return None
    return (when - now).total_seconds()


#: a path segment, query value or user name this long is taken for a token and hidden wherever it
#: appears (Slack's and Teams' tokens are longer; "services", "IncomingWebhook" are not)
_TOKEN_LENGTH = 16
#: shorter than this, a part is no secret worth garbling an answer for ("/1" in "HTTP/1.1")
_SHORTEST_SECRET = 6


def _secrets(raw_url: str) -> list[str]:
    """What ``redact_url`` hides, as it may be quoted back: the path (unless just "/"), the query,
    the user info and password, each token-length path segment or query value; raw, decoded and
    percent-encoded. Longest first, so a longer match wins."""
    try:
        parts = urlsplit(raw_url)
        password = parts.password or ""
    except ValueError:
        return [raw_url]
    path = "" if parts.path == "/" else parts.path
    pieces = [*parts.path.split("/"), *(value for _, value in parse_qsl(parts.query)), parts.username or ""]
    found: set[str] = set()
    for part in [path, parts.query, parts.fragment, parts.netloc.rpartition("@")[0], password,
                 *(piece for piece in pieces if len(unquote(piece)) >= _TOKEN_LENGTH)]:
        if len(unquote(part)) >= _SHORTEST_SECRET:
            plain = unquote(part)
            found |= {part, plain, quote(plain, safe="/"), quote(plain, safe="")}
    return sorted(found, key=len, reverse=True)


def _scrub(text: str, raw_url: str) -> str:
    """A receiver's answer with no part of its URL that ``redact_url`` hides: the whole URL becomes
    scheme and host, any other trace of it (an echoed path, say) "<redacted>"."""
    text = text.replace(raw_url, redact_url(raw_url))
    if secrets := _secrets(raw_url):  # none for "https://host/"; an empty pattern would match everywhere
        text = re.sub("|".join(map(re.escape, secrets)), "<redacted>", text, flags=re.IGNORECASE)
    return text[:300]


async def post(
    client: httpx.AsyncClient | None,
    url: SecretStr,
    *,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
) -> httpx.Response:
    """POST ``body``; a 2xx answer is returned, anything else raised as a delivery error.

    ``timeout`` bounds each step (connecting, writing, each read), and the whole request is
    cut off after ``HTTP_TRY_STEPS`` times that: a receiver that answers a byte at a time cannot
    hold a send for longer than its claim in the delivery log lasts."""
    raw = url.get_secret_value()
    shown = redact_url(raw)
    all_headers = {"Content-Type": "application/json", "User-Agent": "earful-alerts", **headers}
    try:
        async with asyncio.timeout(HTTP_TRY_STEPS * timeout):
            if client is None:
                async with httpx.AsyncClient(timeout=timeout) as own:
                    response = await own.post(raw, content=body, headers=all_headers)
            else:
                response = await client.post(raw, content=body, headers=all_headers, timeout=timeout)
    except TimeoutError:
        raise RetriableDeliveryError(f"{shown}: no complete answer within {HTTP_TRY_STEPS * timeout:.0f}s") from None
    except httpx.TimeoutException as exc:
        raise RetriableDeliveryError(f"{shown}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        # The exception text may quote the URL; the type says enough (ConnectError, ReadError...).
        raise RetriableDeliveryError(f"{shown}: {type(exc).__name__}") from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    detail = _scrub(response.text.strip(), raw)
    message = f"{shown} answered {status}" + (f": {detail}" if detail else "")
    if status in (408, 429) or status >= 500:
        raise RetriableDeliveryError(message, retry_after=_retry_after(response))
    raise PermanentDeliveryError(message)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

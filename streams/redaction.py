"""URLs in logs: scheme and host only, in our lines and in the HTTP client's.

httpx logs every request with its full URL at INFO ("HTTP Request: POST <url> ..."). A webhook's
path is its credential (Slack, Teams, a signed receiver); a feed's query or user info can hold
an API key. ``install_log_filter`` puts one filter on the ``httpx`` and ``httpcore`` loggers
that rewrites those URLs to ``redact_url``'s form, whichever part of earful made the request.

There is exactly one such filter per process, on purpose. With two of different strictness,
the first one to run turns the URL into a string, and the second one no longer recognises it
as a URL: which one wins, and whether a webhook's path is logged, would depend on which module
was imported first.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

__all__ = ["install_log_filter", "redact_url"]

LOGGERS = ("httpx", "httpcore")


def redact_url(url: str | SecretStr | None) -> str:
    """Scheme and host only: the path and query of a webhook URL are its secret."""
    if url is None:
        return "<no url>"
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        parts = urlsplit(raw)
        host = parts.hostname
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not host:
        return "<invalid url>"
    return f"{parts.scheme}://{host}"


class _RequestUrls(logging.Filter):
    """Rewrites the ``httpx.URL`` arguments of a log record to ``redact_url``'s form."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg
                                for arg in record.args)
        return True


_FILTER = _RequestUrls()


def install_log_filter() -> None:
    """Add the filter to the HTTP client's loggers; calling it again changes nothing."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

"""What a source implements, and the errors it may raise.

A connector knows two things: how to fetch a page of mentions since a cursor
(``poll``) and how to turn one native item into a ``Mention`` (``to_mention``).
It never touches Kafka; the runner owns the loop, the producer, the cursor
store, retries and heartbeats.

Errors are grouped by what the runner should do::

    ConnectorError
     ├── FatalError          configuration or credentials are wrong: report, back off long
     ├── RetriableError      5xx, network: retry after ``retry_after`` or with backoff
     │    └── RateLimited    429, quota used up: the platform's allowance, shared by every key
     └── SkippableItem       one native item cannot be mapped: it goes to the rejected topic
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from schemas import Mention

Cursor = Mapping[str, Any] | None


class ConnectorError(Exception):
    """Base of every error a connector raises."""


class FatalError(ConnectorError):
    """The connector cannot work as configured (bad credentials, bad query, gone API), or the
    server answers in a way an immediate retry will not fix (a redirect loop, a body that does
    not decode). A source with several keys skips the failing key and names it."""


class RetriableError(ConnectorError):
    """Try again later; ``retry_after`` seconds when the platform said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(RetriableError):
    """The platform's allowance is used up: no key of the source may ask before ``retry_after``."""


class SkippableItem(ConnectorError):
    """One native item cannot become a Mention; the reason travels with it to the rejected topic."""


@dataclass(frozen=True)
class RejectedItem:
    payload: str
    reason: str


@dataclass(frozen=True)
class Page:
    """What one poll returns.

    ``next_cursor`` is stored only after every mention of the page is acknowledged
    by Kafka, so a crash re-fetches the page instead of skipping it.
    ``has_more`` asks the runner to poll again at once; ``done`` ends a finite source.
    ``rate_limited`` is a rate limit met half-way: the runner delivers the page,
    then waits as that error says before polling again.
    ``skipped`` names the parts of the source (a feed, a subreddit, a video) that failed this
    poll while the others were read, with why: the source is degraded, not down.
    """

    mentions: list[Mention]
    next_cursor: Cursor
    rejected: list[RejectedItem] = field(default_factory=list)
    has_more: bool = False
    done: bool = False
    rate_limited: RateLimited | None = None
    skipped: dict[str, str] = field(default_factory=dict)


class Connector(abc.ABC):
    """A source of mentions. Subclasses set ``name`` and implement ``poll``."""

    name: ClassVar[str]
    #: seconds between polls when a page has nothing more
    poll_interval: float = 60.0

    @abc.abstractmethod
    async def poll(self, cursor: Cursor) -> Page:
        """Fetch the mentions that appeared since ``cursor``."""

    def map_items(self, items: list[Any]) -> tuple[list[Mention], list[RejectedItem]]:
        """Map native items, sending the ones that fail to the rejected list with the reason."""
        mentions: list[Mention] = []
        rejected: list[RejectedItem] = []
        for item in items:
            try:
                mentions.append(self.to_mention(item))
            except Exception as exc:  # noqa: BLE001 - any mapping failure is this item's, not the page's
                rejected.append(RejectedItem(payload=self.describe(item), reason=f"{self.name}: {exc}"))
        return mentions, rejected

    def to_mention(self, item: Any) -> Mention:
        """Turn one native item into a Mention; raise SkippableItem (or any error) when it cannot."""
        raise NotImplementedError

    def describe(self, item: Any) -> str:
        """The native item as text, kept with a rejection so nothing is lost."""
        return _describe(item)

    async def aclose(self) -> None:  # noqa: B027 - most connectors hold nothing to release
        """Release connections; called once by the runner when it stops."""


def _describe(item: Any) -> str:
    import orjson

    try:
        return orjson.dumps(item, default=str).decode()
    except TypeError:
        return repr(item)

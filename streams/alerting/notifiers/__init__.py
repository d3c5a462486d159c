"""Channels that carry an alert to a subscriber, one per file.

Every notifier has ``send(alert, event_key)`` and ``send_digest(alerts, event_key)``;
``event_key`` is the delivery's idempotency key (the same on every retry). Failures raise
``RetriableDeliveryError`` or ``PermanentDeliveryError`` (see errors.py). A send that went
through but not entirely (a mail server that refused some of the recipients) returns a note
saying so, which the dispatcher keeps on the delivery record; otherwise it returns None.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from schemas.records import Alert
from streams.alerting.notifiers.email import SMTP_ROUND_TRIPS, EmailNotifier
from streams.alerting.notifiers.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetriableDeliveryError,
)
from streams.alerting.notifiers.http import HTTP_TRY_STEPS
from streams.alerting.notifiers.pagerduty import PagerDutyNotifier
from streams.alerting.notifiers.slack import SlackNotifier
from streams.alerting.notifiers.teams import TeamsNotifier
from streams.alerting.notifiers.webhook import WebhookNotifier
from streams.alerting.subscriptions import (
    Channel,
    EmailChannel,
    PagerDutyChannel,
    SlackChannel,
    TeamsChannel,
    WebhookChannel,
)

__all__ = [
    "DeliveryError",
    "Notifier",
    "PermanentDeliveryError",
    "RetriableDeliveryError",
    "build_notifier",
    "max_try_seconds",
]


class Notifier(Protocol):
    async def send(self, alert: Alert, event_key: str) -> str | None: ...

    async def send_digest(self, alerts: list[Alert], event_key: str) -> str | None: ...


def build_notifier(channel: Channel, client: httpx.AsyncClient | None = None) -> Notifier:
    """The notifier for a channel; ``client`` is shared by the HTTP ones (and is the test seam)."""
    if isinstance(channel, WebhookChannel):
        return WebhookNotifier(channel, client)
    if isinstance(channel, SlackChannel):
        return SlackNotifier(channel, client)
    if isinstance(channel, TeamsChannel):
        return TeamsNotifier(channel, client)
    if isinstance(channel, PagerDutyChannel):
        return PagerDutyNotifier(channel, client)
    if isinstance(channel, EmailChannel):
        return EmailNotifier(channel)
    raise TypeError(f"no notifier for channel {type(channel).__name__}")


def max_try_seconds(channel: Channel) -> float:
    """The longest one send over ``channel`` can take: an HTTP request is cut off after
    ``HTTP_TRY_STEPS`` timeouts; an SMTP conversation waits for an answer per step and recipient."""
    if isinstance(channel, EmailChannel):
        return (SMTP_ROUND_TRIPS + len(channel.to)) * channel.timeout
    return HTTP_TRY_STEPS * channel.timeout

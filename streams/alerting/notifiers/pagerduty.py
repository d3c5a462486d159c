"""PagerDuty Events API v2: trigger on open/update, resolve on resolved, dedup_key = alert id.

Updates re-trigger the same dedup_key, which PagerDuty folds into the open incident. An alert
that comes back after its all clear (a spike within the cooldown) triggers that dedup_key again,
which opens a new incident: the earlier one was resolved. The URL is configurable (EU service
region, or a local test server).
"""

from __future__ import annotations

from typing import Any

import httpx

from schemas.records import Alert
from streams.alerting.notifiers import render
from streams.alerting.notifiers.errors import PermanentDeliveryError
from streams.alerting.notifiers.http import dumps, post
from streams.alerting.subscriptions import PagerDutyChannel

__all__ = ["PagerDutyNotifier", "pagerduty_event"]

_SEVERITY = {"critical": "critical", "major": "error", "minor": "warning", "info": "info"}


def pagerduty_event(alert: Alert, routing_key: str) -> dict[str, Any]:
    if alert.status == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": alert.id}
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.id,
        "client": "earful",
        "payload": {
            "summary": render.title(alert)[:1024],
            "source": f"earful/{alert.source or 'all-sources'}",
            "severity": _SEVERITY[alert.severity],
            "timestamp": alert.updated_at.isoformat(),
            "component": alert.topic,
            "group": alert.source or "all-sources",
            "class": "social-listening-spike",
            "custom_details": {
                "observed": alert.observed,
                "expected": alert.expected,
                "peak_observed": alert.peak_observed,
                "top_terms": alert.top_terms,
                "samples": render.sample_lines(alert),
                "sequence": alert.sequence,
                "config_version": alert.config_version,
            },
        },
    }
    if alert.kibana_url:
        event["client_url"] = alert.kibana_url
        event["links"] = [{"href": alert.kibana_url, "text": "Mentions in Kibana"}]
    return event


class PagerDutyNotifier:
    def __init__(self, channel: PagerDutyChannel, client: httpx.AsyncClient | None = None) -> None:
        self.channel = channel
        self.client = client

    async def send(self, alert: Alert, event_key: str) -> None:
        event = pagerduty_event(alert, self.channel.routing_key.get_secret_value())
        await post(self.client, self.channel.url, body=dumps(event), headers={}, timeout=self.channel.timeout)

    async def send_digest(self, alerts: list[Alert], event_key: str) -> None:
        # Subscriptions refuse digest for PagerDuty; this guards a hand-built one.
        raise PermanentDeliveryError("pagerduty does not take digests: incidents are per alert")

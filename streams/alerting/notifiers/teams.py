"""Microsoft Teams: an Adaptive Card posted to a Teams workflow (Power Automate) webhook.

Adaptive Cards rather than the legacy MessageCard: Office 365 connectors, which took
MessageCards, are being retired in favour of workflows.
"""

from __future__ import annotations

from typing import Any

import httpx

from schemas.records import Alert
from streams.alerting.notifiers import render
from streams.alerting.notifiers.http import dumps, post
from streams.alerting.subscriptions import TeamsChannel

__all__ = ["TeamsNotifier", "teams_payload"]

_COLOUR = {"critical": "Attention", "major": "Warning", "minor": "Accent", "info": "Default"}


def _alert_body(alert: Alert) -> list[dict[str, Any]]:
    colour = "Good" if alert.status == "resolved" else _COLOUR[alert.severity]
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": render.title(alert), "weight": "Bolder", "wrap": True, "color": colour},
        {"type": "FactSet", "facts": [
            {"title": "Severity", "value": alert.severity},
            {"title": "Observed", "value": f"{alert.observed:g}"},
            {"title": "Expected", "value": f"{alert.expected:g}"},
            {"title": "Opened", "value": f"{alert.opened_at:%Y-%m-%d %H:%M} UTC"},
        ]},
    ]
    if alert.top_terms:
        body.append({"type": "TextBlock", "text": "Top terms: " + ", ".join(alert.top_terms), "wrap": True})
    for line in render.sample_lines(alert):
        body.append({"type": "TextBlock", "text": line, "wrap": True, "isSubtle": True})
    return body


def teams_payload(alerts: list[Alert], *, digest: bool = False) -> dict[str, Any]:
    body: list[dict[str, Any]] = []
    if digest:
        body.append({"type": "TextBlock", "text": render.digest_title(alerts), "size": "Large", "wrap": True})
    actions = []
    for alert in alerts:
        body.extend(_alert_body(alert))
        if alert.kibana_url:
            actions.append({"type": "Action.OpenUrl", "title": f"Kibana: {alert.topic}", "url": alert.kibana_url})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "actions": actions[:5],
    }
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
    }


class TeamsNotifier:
    def __init__(self, channel: TeamsChannel, client: httpx.AsyncClient | None = None) -> None:
        self.channel = channel
        self.client = client

    async def _post(self, payload: dict[str, Any]) -> None:
        await post(self.client, self.channel.url, body=dumps(payload), headers={}, timeout=self.channel.timeout)

    async def send(self, alert: Alert, event_key: str) -> None:
        await self._post(teams_payload([alert]))

    async def send_digest(self, alerts: list[Alert], event_key: str) -> None:
        await self._post(teams_payload(alerts, digest=True))

"""Slack incoming webhook: Block Kit with a plain ``text`` fallback for notifications."""

from __future__ import annotations

from typing import Any

import httpx

from schemas.records import Alert
from streams.alerting.notifiers import render
from streams.alerting.notifiers.http import dumps, post
from streams.alerting.subscriptions import SlackChannel

__all__ = ["SlackNotifier", "slack_payload"]


def _mrkdwn(text: str) -> str:
    # Slack's only required escapes; anything else in a citizen's post is shown as typed.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _alert_blocks(alert: Alert) -> list[dict[str, Any]]:
    fields = [
        f"*Severity*\n{alert.severity}",
        f"*Observed / expected*\n{alert.observed:g} / {alert.expected:g}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(render.title(alert))}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if alert.top_terms:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                       "text": "*Top terms:* " + _mrkdwn(", ".join(alert.top_terms))}})
    for sample in alert.samples:
        text = f"> {_mrkdwn(render.truncate(sample.text))}"
        if sample.url:
            text += f"\n<{sample.url}|{_mrkdwn(sample.source)}>"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    context = f"alert {alert.id} #{alert.sequence}"
    if alert.kibana_url:
        context = f"<{alert.kibana_url}|Open in Kibana> · " + context
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return blocks


def slack_payload(alerts: list[Alert], *, digest: bool = False) -> dict[str, Any]:
    if not digest:
        return {"text": render.title(alerts[0]), "blocks": _alert_blocks(alerts[0])}
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": render.digest_title(alerts)}}
    ]
    for alert in alerts:
        blocks.extend(_alert_blocks(alert))
        blocks.append({"type": "divider"})
    # Slack refuses messages with more than 50 blocks.
    return {"text": render.digest_title(alerts), "blocks": blocks[:50]}


class SlackNotifier:
    def __init__(self, channel: SlackChannel, client: httpx.AsyncClient | None = None) -> None:
        self.channel = channel
        self.client = client

    async def _post(self, payload: dict[str, Any]) -> None:
        await post(self.client, self.channel.url, body=dumps(payload), headers={}, timeout=self.channel.timeout)

    async def send(self, alert: Alert, event_key: str) -> None:
        await self._post(slack_payload([alert]))

    async def send_digest(self, alerts: list[Alert], event_key: str) -> None:
        await self._post(slack_payload(alerts, digest=True))

"""Generic webhook: the alert as JSON, signed so the receiver can tell it came from earful.

Headers: ``X-Earful-Signature: sha256=<hex HMAC-SHA256 of the body with the shared secret>``
and ``Idempotency-Key`` (the same for every retry of one delivery, so a receiver can drop
repeats).
"""

from __future__ import annotations

import hashlib
import hmac

import httpx

from schemas.records import Alert
from streams.alerting.notifiers.http import dumps, post
from streams.alerting.subscriptions import WebhookChannel

__all__ = ["SIGNATURE_HEADER", "WebhookNotifier", "sign"]

SIGNATURE_HEADER = "X-Earful-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    def __init__(self, channel: WebhookChannel, client: httpx.AsyncClient | None = None) -> None:
        self.channel = channel
        self.client = client

    async def _post(self, payload: dict[str, object], event_key: str) -> None:
        body = dumps(payload)
        headers = {"Idempotency-Key": event_key}
        headers[SIGNATURE_HEADER] = sign(self.channel.secret.get_secret_value(), body)
        await post(self.client, self.channel.url, body=body, headers=headers, timeout=self.channel.timeout)

    async def send(self, alert: Alert, event_key: str) -> None:
        await self._post({"kind": "alert", "event_key": event_key, "alert": alert.model_dump(mode="json")}, event_key)

    async def send_digest(self, alerts: list[Alert], event_key: str) -> None:
        await self._post(
            {"kind": "digest", "event_key": event_key, "alerts": [a.model_dump(mode="json") for a in alerts]},
            event_key,
        )

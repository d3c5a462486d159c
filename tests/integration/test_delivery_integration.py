"""Delivery over real connections: a local HTTP receiver, a local SMTP server, and the delivery
log in a real Elasticsearch-API server (``EARFUL_ES_URL``; the test fails when it is down)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import pytest
from aiohttp import web
from elasticsearch import AsyncElasticsearch

from schemas.records import Alert, AlertSample
from streams.alerting.delivery import Dispatcher, ElasticsearchDeliveryLog, RetryPolicy
from streams.alerting.subscriptions import parse_subscriptions
from streams.settings import PROJECT_ROOT, Settings, es_client_kwargs

pytestmark = pytest.mark.integration

NOW = datetime(2024, 7, 1, 2, 0, tzinfo=UTC)  # midday in Sydney
ALERT = Alert(
    id="c0ffee", topic="outage", status="open", severity="major", opened_at=NOW, updated_at=NOW,
    window_start=NOW, observed=120, expected=15, score=0.999, top_terms=["portal", "down"],
    samples=[AlertSample(id="m1", source="mastodon", text="portal down?", url="https://social.example/1")],
)


@pytest.fixture
async def es() -> AsyncIterator[tuple[AsyncElasticsearch, str]]:
    if not os.environ.get("EARFUL_ES_URL"):
        pytest.fail("set EARFUL_ES_URL to an Elasticsearch endpoint (make test starts one)")
    settings = Settings()
    client = AsyncElasticsearch(**es_client_kwargs(settings))
    try:
        await client.info()
    except Exception as exc:
        await client.close()
        pytest.fail(f"no Elasticsearch at {settings.es_url} (set EARFUL_ES_URL): {type(exc).__name__}")
    index = f"earful-deliveries-{uuid.uuid4().hex[:12]}"
    # The shipped template, narrowed to this test's index: the log must fit the strict mapping.
    template = json.loads((PROJECT_ROOT / "schemas/elasticsearch/earful-deliveries.json").read_text())
    template["index_patterns"] = [index]
    template["priority"] = 500
    await client.indices.put_index_template(name=index, **template)
    try:
        yield client, index
    finally:
        await client.indices.delete(index=index, ignore_unavailable=True)
        await client.indices.delete_index_template(name=index, ignore=[404])
        await client.close()


class Receiver:
    """A webhook receiver that answers 503 to the first request, then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if len(self.requests) == 1:
            return web.Response(status=503, text="busy")
        return web.Response(status=200, text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{token}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield rec, f"http://127.0.0.1:{port}/hooks/XXXXsecretXXXX"
    finally:
        await runner.cleanup()


async def _no_wait(_: float) -> None:
    return None


async def test_webhook_fails_then_is_retried_and_logged(
    es: tuple[AsyncElasticsearch, str], receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    client, index = es
    rec, url = receiver
    subs = parse_subscriptions([{"name": "ops-hook", "channel": {"type": "webhook", "url": url, "secret": "k3y"}}])
    clock = [NOW]
    dispatcher = Dispatcher(subs, ElasticsearchDeliveryLog(client, index), clock=lambda: clock[0],
                            sleep=_no_wait, policy=RetryPolicy(inline_attempts=1))
    try:
        [first] = await dispatcher.dispatch(ALERT)
        assert first.status == "pending" and "answered 503" in (first.error or "")
        logged = (await client.get(index=index, id="c0ffee:0:ops-hook"))["_source"]
        assert logged["status"] == "pending" and logged["attempts"] == 1
        assert datetime.fromisoformat(logged["next_attempt_at"]) == NOW + timedelta(minutes=1)

        # A redelivered alert event does not send again, even while the delivery is pending.
        assert await dispatcher.dispatch(ALERT) == []
        clock[0] = NOW + timedelta(minutes=1)
        [done] = await dispatcher.retry_due()
        assert done.status == "sent" and done.attempts == 2
    finally:
        await dispatcher.aclose()

    logged = (await client.get(index=index, id="c0ffee:0:ops-hook"))["_source"]
    assert logged["status"] == "sent" and logged["attempts"] == 2 and logged["channel"] == "webhook"
    assert logged["next_attempt_at"] is None
    assert len(rec.requests) == 2
    (h1, b1), (h2, b2) = rec.requests
    assert h1["Idempotency-Key"] == h2["Idempotency-Key"] == "c0ffee:0:ops-hook"
    assert h2["X-Earful-Signature"] == "sha256=" + hmac.new(b"k3y", b2, hashlib.sha256).hexdigest()
    assert json.loads(b2)["alert"]["id"] == "c0ffee"
    assert "XXXXsecretXXXX" not in caplog.text
    assert await dispatcher.retry_due(NOW + timedelta(days=1)) == []


async def test_a_digest_is_retried_under_its_first_key_with_the_log_in_elasticsearch(
    es: tuple[AsyncElasticsearch, str], receiver: tuple[Receiver, str]
) -> None:
    client, index = es
    rec, url = receiver
    subs = parse_subscriptions([{"name": "daily", "digest": "1h", "topics": ["*"],
                                 "channel": {"type": "webhook", "url": url, "secret": "hook-s3cret"}}])
    clock = [NOW + timedelta(minutes=10)]
    dispatcher = Dispatcher(subs, ElasticsearchDeliveryLog(client, index), clock=lambda: clock[0],
                            sleep=_no_wait, policy=RetryPolicy(inline_attempts=1, retry_backoff=timedelta(hours=1)))
    try:
        await dispatcher.dispatch(ALERT)
        await dispatcher.dispatch(ALERT.model_copy(update={"id": "beef", "topic": "scam"}))
        clock[0] = NOW + timedelta(hours=1)
        failed = await dispatcher.retry_due()  # the receiver answers 503
        assert {r.status for r in failed} == {"pending"}
        clock[0] += timedelta(minutes=5)
        await dispatcher.dispatch(ALERT.model_copy(update={"id": "f00d", "topic": "refund_delay"}))
        clock[0] = NOW + timedelta(hours=2)  # the retry and the next digest are both due
        await dispatcher.retry_due()
    finally:
        await dispatcher.aclose()

    sent = [(h["Idempotency-Key"], sorted(a["id"] for a in json.loads(b)["alerts"])) for h, b in rec.requests]
    first_key = sent[0][0]
    assert sent[1:] == [(first_key, ["beef", "c0ffee"]), (sent[2][0], ["f00d"])] and sent[2][0] != first_key
    logged = {doc_id: (await client.get(index=index, id=doc_id))["_source"]
              for doc_id in ("c0ffee:0:daily", "beef:0:daily", "f00d:0:daily")}
    assert {d["status"] for d in logged.values()} == {"sent"}
    assert logged["c0ffee:0:daily"]["digest_key"] == logged["beef:0:daily"]["digest_key"] == first_key


async def test_email_reaches_the_smtp_server(es: tuple[AsyncElasticsearch, str], smtp: Any) -> None:
    client, index = es
    inbox, port = smtp
    subs = parse_subscriptions([{
        "name": "comms-mail",
        "channel": {"type": "email", "host": "127.0.0.1", "port": port, "security": "none",
                    "from": "earful@agency.example", "to": ["comms@agency.example"]},
    }])
    dispatcher = Dispatcher(subs, ElasticsearchDeliveryLog(client, index), clock=lambda: NOW, sleep=_no_wait)
    [record] = await dispatcher.dispatch(ALERT)
    assert record.status == "sent", record.error
    [raw] = inbox.messages
    msg = message_from_bytes(raw)
    assert msg["Subject"].startswith("[MAJOR] Spike in 'outage'") and msg["To"] == "comms@agency.example"
    plain = next(p for p in msg.walk() if p.get_content_type() == "text/plain").get_payload(decode=True)
    assert b"Top terms: portal, down" in plain
    assert any(p.get_content_type() == "text/html" for p in msg.walk())
    logged = (await client.get(index=index, id="c0ffee:0:comms-mail"))["_source"]
    assert logged["status"] == "sent" and logged["alert"]["top_terms"] == ["portal", "down"]


async def test_a_cooldown_runs_from_the_latest_send_the_log_holds(
    es: tuple[AsyncElasticsearch, str], receiver: tuple[Receiver, str]
) -> None:
    client, index = es
    _, url = receiver
    subs = parse_subscriptions([{"name": "comms", "cooldown": "15m", "channel": {"type": "slack", "url": url}}])
    clock = [NOW]
    dispatcher = Dispatcher(subs, ElasticsearchDeliveryLog(client, index), clock=lambda: clock[0], sleep=_no_wait)
    try:
        [first] = await dispatcher.dispatch(ALERT)
        clock[0] = NOW + timedelta(minutes=20)  # past the cooldown: a new episode goes out
        [second] = await dispatcher.dispatch(ALERT.model_copy(update={"id": "c1", "opened_at": clock[0]}))
        clock[0] = NOW + timedelta(minutes=30)  # 30 min after the first send, 10 after the latest
        [third] = await dispatcher.dispatch(ALERT.model_copy(update={"id": "c2", "opened_at": clock[0]}))
    finally:
        await dispatcher.aclose()
    assert (first.status, second.status) == ("sent", "sent")
    assert third.status == "held" and third.reason == "cooldown"
    assert third.next_attempt_at == NOW + timedelta(minutes=35)


async def test_held_delivery_survives_a_restart(es: tuple[AsyncElasticsearch, str], receiver: tuple[Receiver, str]) -> None:
    client, index = es
    rec, url = receiver
    subs = parse_subscriptions([{"name": "night", "channel": {"type": "slack", "url": url},
                                 "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}}])
    night = datetime(2024, 7, 1, 13, 0, tzinfo=UTC)
    first = Dispatcher(subs, ElasticsearchDeliveryLog(client, index), clock=lambda: night, sleep=_no_wait)
    [held] = await first.dispatch(ALERT)
    assert held.status == "held"
    await first.aclose()
    # A new worker process: only the log remembers the held delivery.
    morning = datetime(2024, 7, 1, 21, 0, tzinfo=UTC)
    second = Dispatcher(subs, ElasticsearchDeliveryLog(client, index), clock=lambda: morning, sleep=_no_wait)
    try:
        [sent] = await second.retry_due()
    finally:
        await second.aclose()
    # Released from hold it gets the full in-line tries: the receiver's first answer is a 503.
    assert sent.status == "sent" and sent.attempts == 2
    assert json.loads(rec.requests[-1][1])["text"].startswith("[MAJOR] Spike in 'outage'")

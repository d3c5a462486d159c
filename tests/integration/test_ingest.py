"""Webhook ingest over the real broker: every mention answered 202 is in the topic."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import orjson
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from connectors.config import IngestConfig
from connectors.ingest import IngestServer, signature
from connectors.runner import MentionProducer
from schemas import mention_id
from tests.integration.conftest import ROOT, Stack, consume_all, wait_for

SECRET = SecretStr("integration-ingest-secret")


def _mention(n: int) -> dict[str, object]:
    return {"source": "pushed", "native_id": f"p-{n}", "text": f"pushed mention {n} about myGov",
            "created_at": "2024-11-20T03:12:00Z"}


def _ids_in_topic(stack: Stack) -> list[str]:
    # Accepted means acknowledged: everything is in the topic already, so read all there is.
    records = consume_all(stack.settings, stack.settings.topic_raw, expect=10**9, timeout=8)
    return [m["id"] for r in records for m in orjson.loads(r.value)["mentions"]]


def _producer(stack: Stack) -> MentionProducer:
    s = stack.settings
    return MentionProducer(s.kafka_servers, topic_raw=s.topic_raw, topic_rejected=s.topic_rejected)


async def test_every_accepted_mention_is_in_the_topic(stack: Stack) -> None:
    producer = _producer(stack)
    server = IngestServer(IngestConfig(secret_env=None, max_mentions=50), SECRET, producer)
    accepted: list[str] = []
    refused = 0
    try:
        async with TestClient(TestServer(server.app())) as client:
            for batch in range(8):
                body = orjson.dumps([_mention(batch * 25 + i) for i in range(25)])
                headers = ({"X-Earful-Signature": signature(SECRET, body)} if batch % 2
                           else {"Authorization": f"Bearer {SECRET.get_secret_value()}"})
                response = await client.post("/mentions", data=body, headers=headers)
                assert response.status == 202, await response.text()
                accepted += (await response.json())["ids"]
                # Interleaved refusals: a bad signature and a schema violation keep nothing.
                bad_sig = await client.post("/mentions", data=orjson.dumps([_mention(10_000 + batch)]),
                                            headers={"X-Earful-Signature": signature(SECRET, b"other")})
                invalid = await client.post("/mentions", headers={"Authorization": f"Bearer {SECRET.get_secret_value()}"},
                                            data=orjson.dumps([_mention(20_000 + batch), {"source": "pushed"}]))
                assert (bad_sig.status, invalid.status) == (403, 422)
                refused += 2
    finally:
        producer.close()
    assert len(accepted) == 200 and refused == 16
    found = _ids_in_topic(stack)
    assert sorted(found) == sorted(accepted)  # all of them, each once
    assert not {mention_id("pushed", f"p-{n}") for n in (10_000, 20_000)} & set(found)


def test_ingest_server_command_accepts_pushes(stack: Stack) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**stack.env, "EARFUL_INGEST_SECRET": SECRET.get_secret_value()}
    log = stack.tmp / "ingest.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "streams", "ingest-server", "--port", str(port)],
                                env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                return False

        wait_for(healthy, timeout=60, what="the ingest server")
        body = orjson.dumps([_mention(n) for n in range(5)])
        response = httpx.post(f"{url}/mentions", content=body, timeout=60,
                              headers={"X-Earful-Signature": signature(SECRET, body)})
        assert response.status_code == 202, response.text
        too_big = httpx.post(f"{url}/mentions", content=b"[" + b" " * 1_100_000 + b"]", timeout=60,
                             headers={"Authorization": f"Bearer {SECRET.get_secret_value()}"})
        assert too_big.status_code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert SECRET.get_secret_value() not in log.read_text()
    assert sorted(_ids_in_topic(stack)) == sorted(mention_id("pushed", f"p-{n}") for n in range(5))

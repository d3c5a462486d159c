"""The webhook ingest server's answers, over aiohttp's test client with a fake producer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from connectors import runner as runner_module
from connectors.config import IngestConfig
from connectors.ingest import IngestServer, signature
from connectors.runner import MAX_MENTION_BYTES
from connectors.text import Pseudonymiser
from schemas import Mention, mention_id

SECRET = SecretStr("shared-ingest-secret-42")


class FakeSink:
    """Records what was sent; counts it as accepted only once its delivery's wait returns (Kafka's ack)."""

    def __init__(self) -> None:
        self.pending: list[Mention] = []
        self.acked: list[Mention] = []
        self.release = threading.Event()
        self.release.set()
        self.fail: Exception | None = None

    def send_mentions(self, mentions: list[Mention]) -> FakeSink:
        self.pending.extend(mentions)
        return self

    def wait(self, timeout: float = 60.0) -> None:
        self.release.wait(timeout)
        if self.fail is not None:
            self.pending.clear()
            raise self.fail
        self.acked.extend(self.pending)
        self.pending.clear()


def mention(n: int, **extra: Any) -> dict[str, Any]:
    return {"source": "brandwatch", "native_id": f"bw-{n}", "text": f"ATO refund delayed again #{n}",
            "created_at": "2024-11-20T03:12:00Z", "url": f"https://example.org/p/{n}", **extra}


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
async def client(sink: FakeSink) -> AsyncIterator[TestClient]:
    config = IngestConfig(max_body_bytes=20_000, max_mentions=10, secret_env=None)
    server = IngestServer(config, SECRET, sink)
    async with TestClient(TestServer(server.app())) as test_client:
        yield test_client


def bearer(secret: str = SECRET.get_secret_value()) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}


async def test_bearer_secret_accepts_and_answers_after_the_ack(client: TestClient, sink: FakeSink) -> None:
    body = orjson.dumps([mention(1), mention(2)])
    sink.release.clear()
    request = asyncio.create_task(client.post("/mentions", data=body, headers=bearer()))
    for _ in range(50):  # let the server receive the request and hand it to the producer
        await asyncio.sleep(0.01)
    assert not request.done()  # no answer while Kafka has not acknowledged
    assert sink.acked == []
    sink.release.set()
    response = await request
    assert response.status == 202
    answer = await response.json()
    assert answer["accepted"] == 2
    assert answer["ids"] == [mention_id("brandwatch", "bw-1"), mention_id("brandwatch", "bw-2")]
    assert [m.native_id for m in sink.acked] == ["bw-1", "bw-2"]


async def test_hmac_signature_accepts_a_single_mention(client: TestClient, sink: FakeSink) -> None:
    body = orjson.dumps(mention(3, id=mention_id("brandwatch", "bw-3")))
    response = await client.post("/mentions", data=body, headers={"X-Earful-Signature": signature(SECRET, body)})
    assert response.status == 202
    assert [m.id for m in sink.acked] == [mention_id("brandwatch", "bw-3")]


@pytest.mark.parametrize(("headers", "status", "says"), [
    ({}, 401, "authentication required"),
    ({"Authorization": "Bearer not-the-secret"}, 403, "wrong bearer token"),
    ({"X-Earful-Signature": "sha256=" + "0" * 64}, 403, "X-Earful-Signature"),
    ({"X-Earful-Signature": "garbage"}, 403, "X-Earful-Signature"),
])
async def test_bad_credentials_are_refused(client: TestClient, sink: FakeSink, headers: dict[str, str],
                                           status: int, says: str) -> None:
    response = await client.post("/mentions", data=orjson.dumps(mention(1)), headers=headers)
    assert response.status == status
    text = await response.text()
    assert says in (await response.json())["error"]
    assert SECRET.get_secret_value() not in text
    assert sink.acked == [] and sink.pending == []


async def test_signature_of_another_body_is_refused(client: TestClient, sink: FakeSink) -> None:
    signed = orjson.dumps(mention(1))
    sent = orjson.dumps(mention(666))
    response = await client.post("/mentions", data=sent, headers={"X-Earful-Signature": signature(SECRET, signed)})
    assert response.status == 403
    assert sink.acked == []


async def test_timestamped_signature_is_accepted_while_fresh(client: TestClient, sink: FakeSink) -> None:
    body = orjson.dumps(mention(4))
    now = int(time.time())
    headers = {"X-Earful-Signature": signature(SECRET, body, now), "X-Earful-Timestamp": str(now)}
    response = await client.post("/mentions", data=body, headers=headers)
    assert response.status == 202, await response.text()
    assert [m.native_id for m in sink.acked] == ["bw-4"]


@pytest.mark.parametrize(("age", "says"), [(3600, "from the server's clock"), (-3600, "from the server's clock")])
async def test_a_replayed_or_future_signature_is_refused(client: TestClient, sink: FakeSink, age: int,
                                                         says: str) -> None:
    body = orjson.dumps(mention(5))
    then = int(time.time()) - age
    headers = {"X-Earful-Signature": signature(SECRET, body, then), "X-Earful-Timestamp": str(then)}
    response = await client.post("/mentions", data=body, headers=headers)
    assert response.status == 403
    assert says in (await response.json())["error"]
    assert sink.acked == []


async def test_the_timestamp_is_part_of_what_is_signed(client: TestClient, sink: FakeSink) -> None:
    body = orjson.dumps(mention(6))
    now = int(time.time())
    # Signed without the timestamp, sent with one: someone changed the timestamp after signing.
    headers = {"X-Earful-Signature": signature(SECRET, body), "X-Earful-Timestamp": str(now)}
    response = await client.post("/mentions", data=body, headers=headers)
    assert response.status == 403
    assert "X-Earful-Timestamp" in (await response.json())["error"]
    headers = {"X-Earful-Signature": signature(SECRET, body, now), "X-Earful-Timestamp": "soon"}
    assert (await client.post("/mentions", data=body, headers=headers)).status == 403
    assert sink.acked == []


async def test_required_timestamp_refuses_a_bare_signature(sink: FakeSink) -> None:
    config = IngestConfig(secret_env=None, require_timestamp=True)
    body = orjson.dumps(mention(7))
    async with TestClient(TestServer(IngestServer(config, SECRET, sink).app())) as strict:
        response = await strict.post("/mentions", data=body, headers={"X-Earful-Signature": signature(SECRET, body)})
        assert response.status == 401
        assert "X-Earful-Timestamp required" in (await response.json())["error"]
        now = int(time.time())
        headers = {"X-Earful-Signature": signature(SECRET, body, now), "X-Earful-Timestamp": str(now)}
        assert (await strict.post("/mentions", data=body, headers=headers)).status == 202
    assert [m.native_id for m in sink.acked] == ["bw-7"]


async def test_oversized_body_is_413(client: TestClient, sink: FakeSink) -> None:
    big = orjson.dumps([mention(1, text="x" * 30_000)])
    response = await client.post("/mentions", data=big, headers=bearer())
    assert response.status == 413
    assert "limit" in (await response.json())["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096]

    response = await client.post("/mentions", data=chunks(), headers=bearer())
    assert response.status == 413
    assert sink.acked == []


# 310,000 Chinese characters are 930 kB of UTF-8: the limit counts bytes, as Kafka does.
@pytest.mark.parametrize("html", ["x" * 950_000, "税" * 310_000], ids=["ascii", "multibyte"])
async def test_a_mention_too_large_for_a_kafka_record_is_413_and_nothing_is_sent(sink: FakeSink, html: str) -> None:
    config = IngestConfig(max_body_bytes=3_000_000, max_mentions=10, secret_env=None)
    body = orjson.dumps([mention(1), mention(2, raw={"html": html})])
    async with TestClient(TestServer(IngestServer(config, SECRET, sink).app())) as big_client:
        response = await big_client.post("/mentions", data=body, headers=bearer())
        answer = await response.json()
    assert response.status == 413, answer
    assert "Kafka record" in answer["error"] and [d["native_id"] for d in answer["details"]] == ["bw-2"]
    assert answer["details"][0]["bytes"] > 900_000
    assert sink.acked == [] and sink.pending == []


async def test_the_largest_mention_a_record_carries_is_accepted_and_one_byte_more_is_413(sink: FakeSink) -> None:
    # The limit is the one the connectors' runner packs records by: a 202 promises a record can carry it.
    config = IngestConfig(max_body_bytes=3_000_000, max_mentions=10, secret_env=None)
    fixed = {"fetched_at": "2024-11-20T03:12:05Z"}  # the stored mention's size must not depend on the clock
    empty = Mention.build(**mention(1, raw={"html": ""}, **fixed))  # type: ignore[arg-type]
    room = MAX_MENTION_BYTES - len(empty.model_dump_json().encode())
    async with TestClient(TestServer(IngestServer(config, SECRET, sink).app())) as big_client:
        fits = await big_client.post("/mentions", headers=bearer(),
                                     data=orjson.dumps([mention(1, raw={"html": "x" * room}, **fixed)]))
        over = await big_client.post("/mentions", headers=bearer(),
                                     data=orjson.dumps([mention(2, raw={"html": "x" * (room + 1)}, **fixed)]))
        assert fits.status == 202, await fits.text()
        assert over.status == 413, await over.text()
    [kept] = sink.acked
    assert len(kept.model_dump_json().encode()) == MAX_MENTION_BYTES
    assert runner_module.encode_pages([kept], partitions=4).refused == []


async def test_too_many_mentions_in_one_request_is_413(client: TestClient, sink: FakeSink) -> None:
    response = await client.post("/mentions", data=orjson.dumps([mention(n) for n in range(11)]), headers=bearer())
    assert response.status == 413
    assert "at most 10" in (await response.json())["error"]


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "no mentions"),
    (b"[42]", "not a mention object"),
])
async def test_malformed_body_is_400_with_the_reason(client: TestClient, sink: FakeSink, body: bytes,
                                                     says: str) -> None:
    response = await client.post("/mentions", data=body, headers=bearer())
    assert response.status == 400
    assert response.content_type == "application/json"
    assert says in (await response.json())["error"]
    assert sink.acked == []


async def test_schema_violations_are_422_and_nothing_of_the_request_is_kept(client: TestClient,
                                                                              sink: FakeSink) -> None:
    bad = [mention(1), mention(2, created_at="yesterday-ish"), mention(3, colour="blue"),
           {"source": "Bad Source!", "native_id": "x", "text": "t", "created_at": "2024-11-20T03:12:00Z"},
           mention(5, id="forged-id"), mention(6, created_at="0001-01-01T00:00:00+05:00")]
    response = await client.post("/mentions", data=orjson.dumps(bad), headers=bearer())
    assert response.status == 422
    answer = await response.json()
    problems = {(d["index"], d["field"]) for d in answer["details"]}
    assert (1, "created_at") in problems and (2, "colour") in problems and (3, "source") in problems
    assert (5, "created_at") in problems  # before UTC's first instant: a bad value, not a 500
    assert any(d["index"] == 4 and "'id' does not match" in d["error"] for d in answer["details"])
    assert 0 not in {d["index"] for d in answer["details"]}
    assert sink.acked == [] and sink.pending == []


async def test_kafka_failure_is_503_so_the_pusher_sends_again(client: TestClient, sink: FakeSink) -> None:
    from kafka.errors import KafkaTimeoutError

    sink.fail = KafkaTimeoutError("Batch for mentions.raw-0 containing 1 record(s) expired")
    response = await client.post("/mentions", data=orjson.dumps(mention(1)), headers=bearer())
    assert response.status == 503
    assert "send the same request again" in (await response.json())["error"]
    assert sink.acked == []


async def test_the_schema_pushers_validate_against(client: TestClient) -> None:
    response = await client.get("/schema")
    assert response.status == 200
    schema = await response.json()
    assert schema["properties"] == Mention.model_json_schema()["properties"]
    assert {"source", "native_id", "text", "created_at"} <= set(schema["required"])
    assert "id" not in schema["required"]  # derived when left out


async def test_a_pushed_author_is_stored_by_its_label_when_a_key_is_set(sink: FakeSink) -> None:
    key = SecretStr("author-hash-key-for-tests")
    server = IngestServer(IngestConfig(secret_env=None), SECRET, sink, author_key=key)
    body = orjson.dumps([mention(1, author="@Kaz_The_Taxpayer"), mention(2, author="@kaz_the_taxpayer")])
    async with TestClient(TestServer(server.app())) as keyed:
        response = await keyed.post("/mentions", data=body, headers=bearer())
        assert response.status == 202, await response.text()
    first, second = sink.acked
    assert first.author == Pseudonymiser(key)("@Kaz_The_Taxpayer") and first.author.startswith("anon:")  # type: ignore[union-attr]
    assert second.author == first.author  # the same person keeps one label, so repeat authors still count
    for stored in sink.acked:
        assert "kaz_the_taxpayer" not in stored.model_dump_json().lower()


async def test_a_source_not_allowed_here_is_422_and_nothing_is_sent(sink: FakeSink) -> None:
    config = IngestConfig(secret_env=None, allowed_sources=["brandwatch", "meltwater"])
    body = orjson.dumps([mention(1), {**mention(2), "source": "talkwalker"}])
    async with TestClient(TestServer(IngestServer(config, SECRET, sink).app())) as strict:
        refused = await strict.post("/mentions", data=body, headers=bearer())
        answer = await refused.json()
        allowed = await strict.post("/mentions", data=orjson.dumps(mention(3)), headers=bearer())
        assert allowed.status == 202, await allowed.text()
    assert refused.status == 422, answer
    assert "nothing was accepted" in answer["error"]
    [problem] = answer["details"]
    assert problem["index"] == 1
    assert "'talkwalker' is not accepted here (allowed: brandwatch, meltwater)" in problem["error"]
    assert [m.native_id for m in sink.acked] == ["bw-3"] and sink.pending == []

"""The bulk writer against a scripted client: what it retries, splits and refuses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError

from streams.sinks.elasticsearch import ElasticsearchSink, WriteAbandoned


def _api_error(status: int) -> ApiError:
    meta = ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("http", "localhost", 9200))
    return ApiError(f"status {status}", meta, {"error": {"type": "test"}, "status": status})


class ScriptedClient:
    """Answers bulk requests from a script of statuses; ``None`` means: index them all."""

    def __init__(self, script: list[int | None], too_large_over: int | None = None, *,
                 max_request_bytes: int | None = None, oversized: frozenset[str] = frozenset()) -> None:
        self.script = script
        self.too_large_over = too_large_over
        self.max_request_bytes = max_request_bytes
        self.oversized = oversized  # documents too large on their own
        self.requests: list[list[str]] = []
        self.stored: dict[str, dict[str, Any]] = {}

    async def bulk(self, operations: list[bytes], refresh: bool) -> dict[str, Any]:
        ids = [orjson.loads(op)["index"]["_id"] for op in operations[::2]]
        self.requests.append(ids)
        status = self.script.pop(0) if self.script else None
        if status is None and self.too_large_over is not None and len(operations) > 2 * self.too_large_over:
            status = 413
        if status is None and self.too_large_over == 0:
            status = 413  # every request is too large, even of one document
        if status is None and self.max_request_bytes is not None and \
                sum(len(op) + 1 for op in operations) > self.max_request_bytes:
            status = 413
        if status is None and self.oversized & set(ids):
            status = 413
        if status is not None:
            raise _api_error(status)
        items = []
        for doc_id, body in zip(ids, operations[1::2], strict=True):
            result = "updated" if doc_id in self.stored else "created"
            self.stored[doc_id] = orjson.loads(body)
            items.append({"index": {"_id": doc_id, "status": 201, "result": result}})
        return {"items": items}


def _write(client: ScriptedClient, n: int, **kwargs: Any) -> Any:
    sink = ElasticsearchSink(client, "mentions", max_backoff=0.001, **kwargs)  # type: ignore[arg-type]
    return asyncio.run(sink.write([{"id": f"m{i}", "text": f"post {i}"} for i in range(n)]))


def test_a_refused_bulk_request_is_retried_until_the_server_takes_it() -> None:
    client = ScriptedClient([503, 429, 503])
    result = _write(client, 3)
    assert result.attempts == 4
    assert sorted(result.created) == ["m0", "m1", "m2"] and not result.refused
    assert set(client.stored) == {"m0", "m1", "m2"}


def test_refused_credentials_are_an_error_naming_the_settings(caplog: pytest.LogCaptureFixture) -> None:
    client = ScriptedClient([401, None])
    with caplog.at_level(logging.WARNING, logger="streams.sinks.elasticsearch"):
        result = _write(client, 2)
    assert len(result.created) == 2
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "credentials (401" in record.getMessage() and "EARFUL_ES_API_KEY" in record.getMessage()


def test_a_request_too_large_is_split() -> None:
    client = ScriptedClient([], too_large_over=2)
    result = _write(client, 5)
    assert sorted(result.created) == [f"m{i}" for i in range(5)] and not result.refused
    assert set(client.stored) == {f"m{i}" for i in range(5)}


def test_the_servers_size_limit_is_learned_and_kept() -> None:
    client = ScriptedClient([], max_request_bytes=1500)
    sink = ElasticsearchSink(client, "mentions", max_backoff=0.001)  # type: ignore[arg-type]
    docs = [{"id": f"m{i}", "text": f"post {i} " + "x" * 80} for i in range(200)]
    result = asyncio.run(sink.write(docs))
    assert len(result.created) == 200 and not result.refused
    assert sink.max_bytes <= 1500
    # The next batch is sized to fit from the start: no request is refused.
    before = len(client.requests)
    again = asyncio.run(sink.write(docs))
    assert len(again.updated) == 200
    sizes = [len(r) for r in client.requests[before:]]
    assert sum(sizes) == 200 and len(sizes) < 50


def test_one_oversized_document_is_refused_and_does_not_shrink_later_requests() -> None:
    client = ScriptedClient([], oversized=frozenset({"m37"}))
    sink = ElasticsearchSink(client, "mentions", max_backoff=0.001)  # type: ignore[arg-type]
    result = asyncio.run(sink.write([{"id": f"m{i}", "text": f"post {i}"} for i in range(100)]))
    assert [doc_id for doc_id, _ in result.refused] == ["m37"]
    assert len(result.created) == 99 and "m37" not in client.stored
    # The next batch goes in one request, as before the oversized document.
    before = len(client.requests)
    asyncio.run(sink.write([{"id": f"n{i}", "text": f"post {i}"} for i in range(100)]))
    assert [len(r) for r in client.requests[before:]] == [100]


def test_requests_are_cut_to_the_byte_budget() -> None:
    client = ScriptedClient([])
    sink = ElasticsearchSink(client, "mentions", max_backoff=0.001, max_bytes=1000)  # type: ignore[arg-type]
    asyncio.run(sink.write([{"id": f"m{i}", "text": "y" * 90} for i in range(50)]))
    assert len(client.stored) == 50 and len(client.requests) > 1
    assert all(len(r) <= 1000 // 100 for r in client.requests)


def test_a_document_too_large_on_its_own_is_refused_with_its_reason() -> None:
    client = ScriptedClient([], too_large_over=0)
    result = _write(client, 2, max_docs=1)
    assert [doc_id for doc_id, _ in result.refused] == ["m0", "m1"]
    assert all("request size limit" in reason for _, reason in result.refused)


def test_a_write_its_caller_abandons_stops_retrying_and_says_so() -> None:
    client = ScriptedClient([503] * 100)
    asked = []

    def abandon() -> bool:
        asked.append(1)
        return len(asked) >= 3

    sink = ElasticsearchSink(client, "mentions", max_backoff=0.001)  # type: ignore[arg-type]
    with pytest.raises(WriteAbandoned, match="2 documents not stored"):
        asyncio.run(sink.write([{"id": "m0"}, {"id": "m1"}], abandon=abandon))
    assert 1 < len(client.requests) < 100 and not client.stored

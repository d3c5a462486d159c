"""The bulk writer against a scripted client: what it retries, splits and refuses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
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


def _failure(status: int, kind: str, reason: str) -> dict[str, Any]:
    return {"status": status, "error": {"type": kind, "reason": reason}}


class ScriptedClient:
    """Answers bulk requests from a script of statuses; ``None`` means: index them all.

    ``item_failures`` scripts answers that are a 200 whose every item fails alike (``None``:
    index them); ``bad`` fails the same documents every time.
    """

    def __init__(self, script: list[int | None], too_large_over: int | None = None, *,
                 max_request_bytes: int | None = None, oversized: frozenset[str] = frozenset(),
                 item_failures: list[dict[str, Any] | None] | None = None,
                 bad: dict[str, dict[str, Any]] | None = None) -> None:
        self.script = script
        self.too_large_over = too_large_over
        self.max_request_bytes = max_request_bytes
        self.oversized = oversized  # documents too large on their own
        self.item_failures = item_failures or []
        self.bad = bad or {}
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
        failure = self.item_failures.pop(0) if self.item_failures else None
        items = []
        for doc_id, body in zip(ids, operations[1::2], strict=True):
            if failure or doc_id in self.bad:
                items.append({"index": {"_id": doc_id, **(failure or self.bad[doc_id])}})
                continue
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


@pytest.mark.parametrize(("client", "says"), [
    (lambda: ScriptedClient([401, None]), "credentials (401"),
    # A key without write rights on the index: a 200 whose every item is refused.
    (lambda: ScriptedClient([], item_failures=[_failure(
        403, "security_exception", "action [indices:data/write/bulk[s]] is unauthorized")]), "403 security_exception"),
], ids=["request", "items"])
def test_refused_credentials_are_an_error_naming_the_settings(
        client: Callable[[], ScriptedClient], says: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams.sinks.elasticsearch"):
        result = _write(client(), 2)
    assert len(result.created) == 2
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert says in record.getMessage() and "EARFUL_ES_API_KEY" in record.getMessage()


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


@pytest.mark.parametrize("failure", [
    _failure(403, "security_exception", "action [indices:data/write/bulk[s]] is unauthorized for API key id "
             "[k1] of user [earful] on indices [mentions-000002]"),
    _failure(403, "cluster_block_exception", "index [mentions] blocked by: [TOO_MANY_REQUESTS/12/disk usage "
             "exceeded flood-stage watermark, index has read-only-allow-delete block];"),
    _failure(404, "index_not_found_exception", "no such index [mentions]"),
    _failure(400, "index_closed_exception", "closed"),
    _failure(400, "illegal_argument_exception", "no write index is defined for alias [mentions]. The write "
             "index may be explicitly disabled using is_write_index=false or the alias points to multiple "
             "indices without one being designated as a write index"),
    # The index's mapping is older than the worker: every (validated) document fails alike.
    _failure(400, "strict_dynamic_mapping_exception", "mapping set to strict, dynamic introduction of [foo] "
             "within [_doc] is not allowed"),
    _failure(400, "illegal_argument_exception", "Limit of total fields [1000] has been exceeded"),
], ids=lambda failure: failure["error"]["type"] + (" (alias)" if "alias" in failure["error"]["reason"] else "")
   + (" (fields)" if "Limit" in failure["error"]["reason"] else ""))
def test_documents_failing_for_the_index_sake_are_held_not_refused(
        failure: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    # A 200 answer whose every item fails because of the index, the cluster or the key's rights.
    client = ScriptedClient([], item_failures=[failure, failure])
    with caplog.at_level(logging.WARNING, logger="streams.sinks.elasticsearch"):
        result = _write(client, 3)
    assert not result.refused
    assert sorted(result.created) == ["m0", "m1", "m2"] and result.attempts == 3
    assert set(client.stored) == {"m0", "m1", "m2"}
    [record] = caplog.records
    assert failure["error"]["type"] in record.getMessage() and "held and retried" in record.getMessage()
    assert record.levelno == logging.ERROR  # the worker stops until an operator acts


def test_an_index_hold_is_said_when_it_starts_not_at_the_next_tenth_attempt(
        caplog: pytest.LogCaptureFixture) -> None:
    busy = _failure(429, "es_rejected_execution_exception", "rejected execution of coordinating operation")
    block = _failure(403, "cluster_block_exception", "index [mentions] blocked by: [FORBIDDEN/8/index write (api)];")
    client = ScriptedClient([], item_failures=[busy, block, block, block])
    with caplog.at_level(logging.WARNING, logger="streams.sinks.elasticsearch"):
        result = _write(client, 2)
    assert len(result.created) == 2 and result.attempts == 5
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(said) == 2
    assert said[0][0] == logging.WARNING and "throttled or failed" in said[0][1] and "attempt 1" in said[0][1]
    assert said[1][0] == logging.ERROR and "cluster_block_exception" in said[1][1] and "attempt 2" in said[1][1]


@pytest.mark.parametrize("failure", [
    _failure(400, "mapper_parsing_exception", "failed to parse field [published_at] of type [date]"),
    _failure(400, "document_parsing_exception", "[1:12] failed to parse field [score] of type [float]"),
    _failure(400, "illegal_argument_exception", "field [text] is too long; no write index is defined"),
    _failure(400, "mapper_parsing_exception", "failed to parse field [created_at]. Preview of field's "
             "value: 'no write index is defined'"),
    _failure(409, "version_conflict_engine_exception", "[m1]: version conflict"),
], ids=lambda failure: failure["error"]["type"])
def test_a_document_failing_for_its_own_sake_is_refused_with_its_reason(failure: dict[str, Any]) -> None:
    client = ScriptedClient([], bad={"m1": failure})
    sink = ElasticsearchSink(client, "mentions", max_backoff=0.001)  # type: ignore[arg-type]
    # Held by mistake, it would be retried for ever: give up after a few tries, and fail.
    result = asyncio.run(sink.write([{"id": f"m{i}", "text": f"post {i}"} for i in range(3)],
                                    abandon=lambda: len(client.requests) > 5))
    assert sorted(result.created) == ["m0", "m2"] and result.attempts == 1
    [(doc_id, reason)] = result.refused
    assert doc_id == "m1" and failure["error"]["type"] in reason and failure["error"]["reason"] in reason
    assert set(client.stored) == {"m0", "m2"}

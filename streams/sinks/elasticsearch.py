"""Bulk writes to Elasticsearch, idempotent by document id.

The document id is the mention id, so a replay, a retry or a redelivered Kafka
record overwrites instead of duplicating. ``write`` returns only once every
document is either stored or refused for a reason of its own (a mapping error,
which retrying cannot fix); until then it retries with backoff, so the caller
acknowledges Kafka records only after their mentions are safe. A whole request
refused (an overloaded cluster's 429 or 503, an expired API key's 401) is retried
the same way, and logged as an error when it is about credentials. So are documents
the bulk answer fails one by one for the index's sake rather than their own (a write
block, a missing index, a key without write rights on a new index): every document
of the batch fails alike, and refusing them would send valid mentions to the
rejected topic.

Requests hold at most ``max_docs`` documents and ``max_bytes`` bytes (Elasticsearch's
advice is a few MB to tens of MB; its own limit, ``http.max_content_length``, is 100 MB
by default). A request the server still finds too large (413) is split in two, again
and again: a document too large on its own is refused with its reason, and the others
go in. Only when both halves of a refused request are taken has the server shown a
smaller size limit, and ``max_bytes`` comes down to it; one oversized document does
not slow every later request.

The bulk answer also says which documents are new (``created``) and which were
already there (``updated``), for the worker's progress figures. (Alerting counts
by mention id, so a redelivered record does not inflate a spike either way.)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from elasticsearch import ApiError, AsyncElasticsearch, ConnectionTimeout, TransportError
from elasticsearch import ConnectionError as ESConnectionError

log = logging.getLogger(__name__)

#: per-item statuses that a later attempt may fix
RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

#: per-item error types about the index, the cluster or the worker's rights, never the document
INDEX_ERROR_TYPES = frozenset({"security_exception", "cluster_block_exception", "index_not_found_exception",
                               "index_closed_exception", "invalid_index_name_exception",
                               "strict_dynamic_mapping_exception"})
#: how an ``illegal_argument_exception`` about the index, not the document, begins
INDEX_ARGUMENT_ERRORS = ("no write index is defined", "Limit of total fields")


class WriteAbandoned(Exception):
    """The write gave up between retries because its caller is going away."""


@dataclass
class WriteResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    #: (document id, reason) for documents Elasticsearch refused for good
    refused: list[tuple[str, str]] = field(default_factory=list)
    attempts: int = 0


def make_client(es_kwargs: dict[str, Any]) -> AsyncElasticsearch:
    try:
        from elasticsearch.serializer import OrjsonSerializer

        return AsyncElasticsearch(**es_kwargs, serializer=OrjsonSerializer())
    except ImportError:  # pragma: no cover - orjson is a dependency
        return AsyncElasticsearch(**es_kwargs)


def _refusal(exc: ApiError) -> str:
    """What an operator should read when the search server refuses a whole bulk request."""
    status = exc.status_code
    if status in (401, 403):
        return (f"the search server refused the worker's credentials ({status} {exc.message}): check "
                "EARFUL_ES_API_KEY or EARFUL_ES_USERNAME/EARFUL_ES_PASSWORD and the key's index "
                "privileges; the batch is held and retried")
    return f"the search server refused the bulk request ({status} {exc.message}); the batch is held and retried"


def _index_failure(status: int, error: dict[str, Any]) -> bool:
    """Whether a document failed for the index's sake, so that the batch is held, not refused.

    - 401 or 403: the credentials, or the key's privileges on this index (a new index after a
      rollover); a 403 is also a write block (``cluster_block_exception``: a read-only index,
      or the disk's flood-stage watermark).
    - 404: the index is missing and may not be created automatically (an ``index`` operation
      has no other 404).
    - a closed index, an invalid index name, an alias with no write index.
    - a mapping older than the worker: a field the index does not know yet under
      ``dynamic: strict`` (documents are built from validated mentions, so only the index
      can be behind), or the index's total-fields limit reached as the taxonomy grew.

    Every document of the batch fails alike and goes in once an operator fixes the cluster
    (``earful setup`` updates the mapping). Anything else (a field that does not parse, a
    document too large, a version conflict) is the document's own, and retrying cannot fix it.
    """
    kind = error.get("type")
    return (status in (401, 403, 404) or kind in INDEX_ERROR_TYPES
            or (kind == "illegal_argument_exception"
                and str(error.get("reason", "")).startswith(INDEX_ARGUMENT_ERRORS)))


class ElasticsearchSink:
    def __init__(self, client: AsyncElasticsearch, index: str, *, max_backoff: float = 30.0,
                 max_docs: int = 5000, max_bytes: int = 10 * 2**20) -> None:
        self.client = client
        self.index = index
        self.max_backoff = max_backoff
        #: documents per bulk request
        self.max_docs = max_docs
        #: bytes per bulk request; lowered when the search server shows a smaller limit
        self.max_bytes = max_bytes

    async def write(self, docs: Sequence[dict[str, Any]],
                    abandon: Callable[[], bool] | None = None) -> WriteResult:
        """Index ``docs`` (each with an ``id``); retry until each is stored or refused.

        ``abandon`` is asked before each retry: when it says so (the worker is stopping), the
        write raises ``WriteAbandoned`` and the caller must not acknowledge the batch.
        """
        result = WriteResult()
        pending = {doc["id"]: orjson.dumps(doc) for doc in docs}  # last copy of an id wins
        failures = 0
        holding = False  # the last attempt was held for the index's sake
        while pending:
            if failures and abandon is not None and abandon():
                raise WriteAbandoned(f"{len(pending)} documents not stored")
            result.attempts += 1
            try:
                items = await self._bulk(pending)
            except (ESConnectionError, ConnectionTimeout) as exc:
                failures += 1
                await self._pause(failures, f"search server unreachable: {exc}", abandon)
                continue
            except TransportError as exc:
                failures += 1
                await self._pause(failures, f"bulk request failed: {exc}", abandon)
                continue
            except ApiError as exc:  # the whole request refused: overloaded, credentials
                failures += 1
                await self._pause(failures, _refusal(exc), abandon, error=exc.status_code in (401, 403))
                continue
            retry: dict[str, bytes] = {}
            held = ""  # why the index takes no documents, for the log
            credentials = False
            for item in items:
                outcome = item.get("index") or next(iter(item.values()))
                doc_id = outcome["_id"]
                status = outcome.get("status", 500)
                error = outcome.get("error") or {}
                if status < 300:
                    (result.created if outcome.get("result") == "created" else result.updated).append(doc_id)
                elif status in RETRIABLE_STATUSES:
                    retry[doc_id] = pending[doc_id]
                elif _index_failure(status, error):
                    retry[doc_id] = pending[doc_id]
                    held = held or f"{status} {error.get('type')}: {error.get('reason')}"
                    credentials = credentials or status == 401 or error.get("type") == "security_exception"
                else:
                    reason = f"elasticsearch refused the document ({status} {error.get('type')}: {error.get('reason')})"
                    result.refused.append((doc_id, reason))
            if retry:
                failures += 1
                if held:
                    hint = ("; check the key's index privileges (EARFUL_ES_API_KEY or "
                            "EARFUL_ES_USERNAME/EARFUL_ES_PASSWORD)") if credentials else ""
                    message = (f"the search server refuses writes to {self.index} ({held}){hint}; "
                               f"{len(retry)} documents held and retried")
                else:
                    message = f"{len(retry)} documents throttled or failed; retrying"
                # An index refusing writes stops the worker until an operator acts: an error,
                # said as soon as it starts rather than at the next tenth attempt.
                await self._pause(failures, message, abandon, error=bool(held), say=bool(held) and not holding)
                holding = bool(held)
            pending = retry
        return result

    async def _bulk(self, pending: dict[str, bytes]) -> list[dict[str, Any]]:
        """Bulk requests of at most ``max_docs`` documents and ``max_bytes`` bytes; the items in order."""
        prefix = b'{"index":{"_index":' + orjson.dumps(self.index) + b',"_id":'
        operations = {doc_id: prefix + orjson.dumps(doc_id) + b"}}" for doc_id in pending}
        items: list[dict[str, Any]] = []
        chunk: list[str] = []
        size = 0
        for doc_id, body in pending.items():
            length = len(operations[doc_id]) + len(body) + 2
            if chunk and (len(chunk) >= self.max_docs or size + length > self.max_bytes):
                items.extend((await self._send(chunk, operations, pending))[0])
                chunk, size = [], 0
            chunk.append(doc_id)
            size += length
        if chunk:
            items.extend((await self._send(chunk, operations, pending))[0])
        return items

    async def _send(self, ids: list[str], operations: dict[str, bytes],
                    pending: dict[str, bytes]) -> tuple[list[dict[str, Any]], bool]:
        """One bulk request, split in two while the server finds it too large; its items, and
        whether it went in whole."""
        body = [line for doc_id in ids for line in (operations[doc_id], pending[doc_id])]
        try:
            response = await self.client.bulk(operations=body, refresh=False)
        except ApiError as exc:
            if exc.status_code != 413:
                raise
            if len(ids) == 1:  # one document alone is larger than the server takes: a refusal of its own
                return [{"index": {"_id": ids[0], "status": 413, "error": {
                    "type": "request_too_large",
                    "reason": "the document alone exceeds the request size limit"}}}], False
            half = len(ids) // 2
            first, first_whole = await self._send(ids[:half], operations, pending)
            second, second_whole = await self._send(ids[half:], operations, pending)
            if first_whole and second_whole:  # the request's size was the trouble, not one document
                taken = max(_size(ids[:half], operations, pending), _size(ids[half:], operations, pending))
                if taken < self.max_bytes:
                    self.max_bytes = taken
                    log.warning("bulk requests of %d bytes are too large for the search server: "
                                "sending at most %d bytes per request", _size(ids, operations, pending), taken)
            return first + second, False
        return response["items"], True

    async def _pause(self, failures: int, message: str, abandon: Callable[[], bool] | None = None, *,
                     error: bool = False, say: bool = False) -> None:
        delay = random.uniform(0.5, 1.0) * min(self.max_backoff, 0.2 * 2 ** min(failures, 10))
        if say or failures == 1 or failures % 10 == 0:
            log.log(logging.ERROR if error else logging.WARNING, "%s (attempt %d, next in %.1fs)",
                    message, failures, delay)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if abandon is not None and abandon():
                return  # the next turn of the loop raises WriteAbandoned
            await asyncio.sleep(min(left, 0.5))

    async def close(self) -> None:
        await self.client.close()


def _size(ids: list[str], operations: dict[str, bytes], pending: dict[str, bytes]) -> int:
    return sum(len(operations[doc_id]) + len(pending[doc_id]) + 2 for doc_id in ids)

"""Bulk writes to Elasticsearch, idempotent by document id.

The document id is the mention id, so a replay, a retry or a redelivered Kafka
record overwrites instead of duplicating. ``write`` returns only once every
document is either stored or refused for a reason of its own (a mapping error,
which retrying cannot fix); until then it retries with backoff, so the caller
acknowledges Kafka records only after their mentions are safe.

The bulk answer also says which documents are new (``created``) and which were
already there (``updated``), for the worker's progress figures. (Alerting counts
by mention id, so a redelivered record does not inflate a spike either way.)
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch, ConnectionTimeout, TransportError
from elasticsearch import ConnectionError as ESConnectionError

log = logging.getLogger(__name__)

#: per-item statuses that a later attempt may fix
RETRIABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


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


class ElasticsearchSink:
    def __init__(self, client: AsyncElasticsearch, index: str, *, max_backoff: float = 30.0) -> None:
        self.client = client
        self.index = index
        self.max_backoff = max_backoff

    async def write(self, docs: Sequence[dict[str, Any]]) -> WriteResult:
        """Index ``docs`` (each with an ``id``); retry until each is stored or refused."""
        result = WriteResult()
        pending = {doc["id"]: orjson.dumps(doc) for doc in docs}  # last copy of an id wins
        failures = 0
        while pending:
            result.attempts += 1
            try:
                items = await self._bulk(pending)
            except (ESConnectionError, ConnectionTimeout) as exc:
                failures += 1
                await self._pause(failures, f"search server unreachable: {exc}")
                continue
            except TransportError as exc:
                failures += 1
                await self._pause(failures, f"bulk request failed: {exc}")
                continue
            retry: dict[str, bytes] = {}
            for item in items:
                outcome = item.get("index") or next(iter(item.values()))
                doc_id = outcome["_id"]
                status = outcome.get("status", 500)
                if status < 300:
                    (result.created if outcome.get("result") == "created" else result.updated).append(doc_id)
                elif status in RETRIABLE_STATUSES:
                    retry[doc_id] = pending[doc_id]
                else:
                    error = outcome.get("error") or {}
                    reason = f"elasticsearch refused the document ({status} {error.get('type')}: {error.get('reason')})"
                    result.refused.append((doc_id, reason))
            if retry:
                failures += 1
                await self._pause(failures, f"{len(retry)} documents throttled or failed; retrying")
            pending = retry
        return result

    async def _bulk(self, pending: dict[str, bytes]) -> list[dict[str, Any]]:
        action = b'{"index":{"_index":' + orjson.dumps(self.index) + b',"_id":'
        operations: list[bytes] = []
        for doc_id, body in pending.items():
            operations.append(action + orjson.dumps(doc_id) + b"}}")
            operations.append(body)
        response = await self.client.bulk(operations=operations, refresh=False)
        return list(response["items"])

    async def _pause(self, failures: int, message: str) -> None:
        delay = random.uniform(0.5, 1.0) * min(self.max_backoff, 0.2 * 2 ** min(failures, 10))
        if failures == 1 or failures % 10 == 0:
            log.warning("%s (attempt %d, next in %.1fs)", message, failures, delay)
        await asyncio.sleep(delay)

    async def close(self) -> None:
        await self.client.close()

"""The worker's agents, wired to one Faust app.

``index-mentions`` consumes ``mentions.raw`` in batches (``take_events``): it
validates, dedupes, tags and bulk-indexes a batch (in slices of ``batch_size`` mentions,
one slice tagged while the previous one is being indexed), sends what is invalid to
``mentions.rejected`` with the reason, and only then lets Faust acknowledge the
batch's records. Offsets are therefore committed only past mentions that are
stored (in Elasticsearch) or rejected (in Kafka, acked): a worker killed at any
point loses nothing, and the records it re-reads overwrite the same documents.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from schemas import Rejected
from streams import pipeline
from streams.settings import Settings
from streams.sinks.elasticsearch import ElasticsearchSink, WriteAbandoned

log = logging.getLogger(__name__)

#: called with the indexed documents of every batch (the counting of alerting hooks in here)
OnIndexed = Callable[[list[dict[str, Any]], "faust.types.EventT"], Awaitable[None]]


@dataclass
class Throughput:
    """Running totals, logged every ``every`` seconds so an operator sees progress."""

    every: float = 10.0
    records: int = 0
    mentions: int = 0
    created: int = 0
    rejected: int = 0
    #: records in the last batch and when it was done (a full batch means a backlog)
    last_records: int = 0
    last_at: float = 0.0
    #: where the time goes: validating and tagging, waiting on the search server, counting
    seconds: dict[str, float] = field(default_factory=lambda: {"tag": 0.0, "index": 0.0, "count": 0.0})
    _last_log: float = field(default_factory=time.monotonic)
    _last_mentions: int = 0

    def lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - since
        return now

    def add(self, batch: pipeline.Batch, created: int) -> None:
        """``batch.rejected`` includes the documents the search server refused."""
        self.records += batch.records
        self.mentions += batch.mentions_in
        self.created += created
        self.rejected += len(batch.rejected)
        now = time.monotonic()
        self.last_records, self.last_at = batch.records, now
        if now - self._last_log >= self.every:
            rate = (self.mentions - self._last_mentions) / (now - self._last_log)
            log.info("indexed %d mentions (%d new, %d rejected) from %d records; %.0f mentions/s "
                     "(seconds tagging %.1f, waiting on the index %.1f, counting %.1f)",
                     self.mentions, self.created, self.rejected, self.records, rate,
                     self.seconds["tag"], self.seconds["index"], self.seconds["count"])
            self._last_log, self._last_mentions = now, self.mentions


def hold(events: list[Any]) -> None:
    """Keep the records of a batch that was not stored from being committed.

    ``take_events`` acknowledges every event of a batch when the body that handled it exits,
    by an exception or a cancellation too, and the consumer then commits past them: a batch
    lost. A message already marked acknowledged is skipped by that acknowledgement and never
    joins the consumer's committable offsets, so whoever reads the partition next (this worker
    after a restart, another after a rebalance) reads it again. It also lets a stop, which
    waits for unacknowledged messages, go ahead. Faust may still commit past such a hole when
    later records of the partition are acknowledged, so after a hold the worker stops.
    """
    for event in events:
        event.message.acked = True


def register(app: faust.App, settings: Settings, tagger: pipeline.TaggerLike, sink: ElasticsearchSink,
             on_indexed: OnIndexed | None = None) -> Throughput:
    raw = app.topic(settings.topic_raw, value_serializer="raw", key_serializer="raw",
                    partitions=settings.raw_partitions)
    rejected_topic = app.topic(settings.topic_rejected, value_serializer="raw", key_serializer="raw",
                               partitions=1)
    stats = Throughput()

    async def send_rejected(items: list[Rejected]) -> None:
        futures = [await rejected_topic.send(key=None, value=item.model_dump_json().encode())
                   for item in items]
        # Wait for the broker's acknowledgement: the source records are acked right after.
        await asyncio.gather(*futures)

    async def write(docs: list[dict[str, Any]], batch: pipeline.Batch) -> tuple[list[dict[str, Any]], int]:
        """Index a slice: the documents stored (new or overwritten) and how many were new; what
        the search server refuses joins the batch's rejections."""
        result = await sink.write(docs, abandon=lambda: bool(app.should_stop))
        if not result.refused:
            return docs, len(result.created)
        by_id = {d["id"]: d for d in docs}
        batch.rejected.extend(pipeline.refused_document(by_id[doc_id], reason, settings.index_mentions)
                              for doc_id, reason in result.refused)
        refused = {doc_id for doc_id, _ in result.refused}
        return [d for d in docs if d["id"] not in refused], len(result.created)

    async def store(events: list[Any]) -> None:
        """Index a batch, send its rejections, count it: everything before it may be acked."""
        records = [pipeline.RawRecord(e.value, e.message.topic, e.message.partition, e.message.offset)
                   for e in events]
        # CPU work runs in a thread so the event loop keeps the bulk request of the previous
        # slice (and the consumer's fetches and heartbeats) moving while the next is tagged.
        clock = time.perf_counter()
        batch, mentions = await asyncio.to_thread(pipeline.prepare, records)
        stored: list[dict[str, Any]] = []
        created = 0
        in_flight: asyncio.Future[tuple[list[dict[str, Any]], int]] | None = None
        try:
            for start in range(0, len(mentions), settings.batch_size):
                docs = await asyncio.to_thread(pipeline.tag, mentions[start:start + settings.batch_size], tagger)
                clock = stats.lap("tag", clock)
                if in_flight is not None:
                    done, new = await in_flight
                    stored.extend(done)
                    created += new
                    clock = stats.lap("index", clock)
                in_flight = asyncio.ensure_future(write(docs, batch))
            if in_flight is not None:
                done, new = await in_flight
                stored.extend(done)
                created += new
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
        if batch.rejected:
            await send_rejected(batch.rejected)
        clock = stats.lap("index", clock)
        # Every stored mention is counted, overwritten ones too (a batch re-read after a
        # crash may not have been counted): the counting agent counts each id once.
        if on_indexed is not None and stored:
            await on_indexed(stored, events[-1])
            stats.lap("count", clock)
        stats.add(batch, created)

    @app.agent(raw, name="index-mentions", concurrency=settings.worker_concurrency)
    async def index_mentions(stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            try:
                await store(events)
            except WriteAbandoned:
                hold(events)
                log.warning("the worker is stopping while the search server refuses writes: %d records "
                            "left unacknowledged, to be read again", len(events))
            except asyncio.CancelledError:
                hold(events)  # the worker is stopping in the middle of the batch
                raise
            except Exception as exc:
                # Going on would acknowledge later records of the same partitions, and Faust can
                # commit past a hole at the head of a partition: stop instead, holding the batch.
                hold(events)
                log.exception("a batch of %d records could not be stored: the worker stops without "
                              "acknowledging it, and reads it again when restarted", len(events))
                await app.crash(exc)
                return

    @app.timer(5.0)
    async def reload_taxonomy() -> None:
        reload = getattr(tagger, "maybe_reload", None)
        if reload is not None and reload():
            log.info("taxonomy reloaded: now %s", tagger.version)

    return stats

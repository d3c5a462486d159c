"""The worker's agents, wired to one Faust app.

``index-mentions`` consumes ``mentions.raw`` in batches (``take_events``): it
validates, dedupes, tags and bulk-indexes a batch (in slices of ``batch_size`` mentions,
one slice tagged while the previous one is being indexed), sends what is invalid to
``mentions.rejected`` with the reason, and only then lets Faust acknowledge the
batch's records. Offsets are therefore committed only past mentions that are
stored (in Elasticsearch) or rejected (in Kafka, acked): a worker killed at any
point loses nothing, and the records it re-reads overwrite the same documents.
A batch that cannot be stored is never acknowledged: while Elasticsearch refuses it the
sink retries, and if the worker is told to stop meanwhile, or the batch fails in any other
way, the process ends at once (``exit_holding``) and the next worker reads it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import faust

from schemas import Rejected
from streams import pipeline
from streams.settings import Settings
from streams.sinks.elasticsearch import ElasticsearchSink, WriteAbandoned

log = logging.getLogger(__name__)

#: called with the indexed documents of every batch (the counting of alerting hooks in here)
OnIndexed = Callable[[list[dict[str, Any]], "faust.types.EventT"], Awaitable[None]]


#: a batch stored for this long is held by the search server, not just being written
STALL_SECONDS = 10.0


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
    #: since when each batch being stored began (one per index actor), and when counting began
    busy: dict[int, float] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    #: where the time goes: validating and tagging, waiting on the search server, counting
    seconds: dict[str, float] = field(default_factory=lambda: {"tag": 0.0, "index": 0.0, "count": 0.0})
    _last_log: float = field(default_factory=time.monotonic)
    _last_mentions: int = 0

    def caught_up(self, *, batch_size: int, batch_within: float, warm_up: float,
                  stall: float = STALL_SECONDS, now: float | None = None) -> bool:
        """Whether the mentions read so far are counted, so that windows may close.

        Not while a batch has been held for ``stall`` seconds (the search server refusing
        writes: its mentions are counted once stored), not while a backlog is being read
        (the last batch was full and the next is due), and not before this worker has stored
        a batch in its first ``warm_up`` seconds (what the previous worker left unread comes
        first). Windows close late in those cases, never short of their mentions.
        """
        now = time.monotonic() if now is None else now
        if any(now - since >= stall for since in self.busy.values()):
            return False
        if not self.last_at:
            return now - self.started_at >= warm_up
        idle = now - self.last_at > 2 * batch_within
        return idle or self.last_records < batch_size

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


def exit_holding(events: list[Any], code: int, why: str = "the worker is stopping") -> NoReturn:
    """End the worker process at once, before anything can acknowledge ``events``.

    ``take_events`` acknowledges every event of a batch when the body that handled it exits,
    by an exception or a cancellation too, and the consumer then commits past them: a batch
    not stored would be lost. Faust's own shutdown commits too, and its commit logic can pass
    a hole in a partition's acknowledged offsets. Ending the process here commits nothing
    more: the batch, and whatever was stored after the last commit (written again under the
    same ids, counted once by id), is read again by the next worker.
    """
    log.warning("%s: stopping the worker without acknowledging %d records; they are read again by the "
                "next worker (%s)", why, len(events), _where(events))
    logging.shutdown()
    os._exit(code)


def _where(events: list[Any]) -> str:
    """The partitions and offsets of a batch, for a log line: "mentions.raw[0] 12-19, mentions.raw[3] 7-9"."""
    spans: dict[tuple[str, int], list[int]] = {}
    for event in events:
        spans.setdefault((event.message.topic, event.message.partition), []).append(event.message.offset)
    return ", ".join(f"{topic}[{partition}] {min(offsets)}-{max(offsets)}"
                     for (topic, partition), offsets in sorted(spans.items()))


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
            stats.busy[id(events)] = time.monotonic()
            try:
                await store(events)
                del stats.busy[id(events)]
            except WriteAbandoned:
                exit_holding(events, 0, "the worker is stopping while the search server refuses writes")
            except asyncio.CancelledError:
                exit_holding(events, 0, "the worker is stopping in the middle of a batch")
            except Exception:
                # Going on would acknowledge later records of the same partitions.
                log.exception("a batch of %d records could not be stored", len(events))
                exit_holding(events, 1, "a batch could not be stored")

    @app.timer(5.0)
    async def reload_taxonomy() -> None:
        reload = getattr(tagger, "maybe_reload", None)
        if reload is not None and reload():
            log.info("taxonomy reloaded: now %s", tagger.version)

    return stats

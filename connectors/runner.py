"""The runner: the only place that talks to Kafka on the way in.

It owns the poll loop of every connector, the kafka-python producer, the cursor
store, retries with backoff and the heartbeats.

Placement: each mention goes to the partition its id hashes to (Kafka's own
murmur2 of the id), so every copy of a mention meets the same worker. One Kafka
record carries a page of mentions of one partition (``MentionPage``): the
per-record cost of the broker and the stream processor is paid once per page.
A cursor is saved only after Kafka acknowledged the whole page (acks=all). A page
Kafka does not acknowledge (the cluster down, a partition without its replicas)
keeps that source's cursor where it was: the source backs off and reads the page
again, while the other sources go on (a mention sent twice is stored once, by id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from connectors.base import Connector, FatalError, Page, RateLimited, RejectedItem, RetriableError
from connectors.cursors import CursorStore
from schemas import Mention, Rejected, utcnow

log = logging.getLogger(__name__)

#: a record stays well under the broker's default 1 MB limit
MAX_RECORD_BYTES = 900_000
MAX_PAGE_MENTIONS = 500
_PAGE_OPEN, _PAGE_CLOSE = b'{"mentions":[', b'],"schema_version":1}'  # a page around its mentions
_PAGE_OVERHEAD = len(_PAGE_OPEN) + len(_PAGE_CLOSE)
#: the largest mention a record can carry: the record's limit less the page around it
MAX_MENTION_BYTES = MAX_RECORD_BYTES - _PAGE_OVERHEAD
#: what the rejected topic keeps of something too large for a Kafka record: enough to tell what it was
KEPT_BYTES = 2000


def partition_for(mention_id: str, partitions: int) -> int:
    return (murmur2(mention_id.encode()) & 0x7FFFFFFF) % partitions


class Pages(NamedTuple):
    records: list[tuple[int, bytes]]  # (partition, page)
    refused: list[tuple[str, RejectedItem]]  # (source, item): mentions no Kafka record could carry


def encode_pages(mentions: Iterable[Mention], partitions: int) -> Pages:
    """Group mentions by partition into records of at most MAX_PAGE_MENTIONS / MAX_RECORD_BYTES
    (the page around the mentions included).

    A mention too large for a record on its own loses its ``raw`` payload (logged); one still
    too large is refused with its reason, so one post cannot block its source's every poll."""
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    refused: list[tuple[str, RejectedItem]] = []
    for mention in mentions:
        doc = mention.model_dump_json().encode()
        if len(doc) > MAX_MENTION_BYTES and mention.raw is not None:
            log.warning("mention %s is %d bytes, more than a Kafka record takes: sent without its raw payload",
                        mention.id, len(doc))
            doc = mention.model_copy(update={"raw": None}).model_dump_json().encode()
        if len(doc) > MAX_MENTION_BYTES:
            refused.append((mention.source, RejectedItem(
                payload=doc[:KEPT_BYTES].decode(errors="ignore"),
                reason=f"mention {mention.id} is {len(doc)} bytes, more than a Kafka record takes "
                       f"({MAX_MENTION_BYTES} for one mention); its first {KEPT_BYTES:,} bytes are kept here")))
            continue
        by_partition[partition_for(mention.id, partitions)].append(doc)
    records: list[tuple[int, bytes]] = []
    for partition, docs in sorted(by_partition.items()):
        chunk: list[bytes] = []
        size = _PAGE_OVERHEAD  # the record's bytes so far: the page, its mentions, their commas
        for doc in docs:
            if chunk and (len(chunk) >= MAX_PAGE_MENTIONS or size + 1 + len(doc) > MAX_RECORD_BYTES):
                records.append((partition, _page(chunk)))
                chunk, size = [], _PAGE_OVERHEAD
            size += len(doc) + (1 if chunk else 0)
            chunk.append(doc)
        if chunk:
            records.append((partition, _page(chunk)))
    return Pages(records, refused)


def _page(docs: list[bytes]) -> bytes:
    return _PAGE_OPEN + b",".join(docs) + _PAGE_CLOSE


def rejected_record(item: RejectedItem, source: str) -> bytes:
    """The rejected item as a record of the rejected topic.

    A native item too large for a Kafka record (a post with a megabyte of HTML) keeps the first
    KEPT_BYTES of its payload, and its reason says so: Kafka would refuse the whole record, the
    source would keep its cursor and read the same page again at every poll."""
    value = _rejected(source, item.reason, item.payload)
    if len(value) <= MAX_RECORD_BYTES:
        return value
    size = len(item.payload.encode())
    log.warning("%s: a rejected item is %d bytes, more than a Kafka record takes: its first %d bytes are kept",
                source, size, KEPT_BYTES)
    # The reason is cut too: it is the connector's error text, which may quote the item.
    reason = (f"{item.reason[:KEPT_BYTES]} (too large for a Kafka record: "
              f"kept its first {KEPT_BYTES:,} of {size:,} bytes)")
    return _rejected(source, reason, item.payload.encode()[:KEPT_BYTES].decode(errors="ignore"))


def _rejected(source: str, reason: str, payload: str) -> bytes:
    return Rejected(reason=reason, payload=payload, topic=f"connector:{source}").model_dump_json().encode()


class Delivery:
    """The Kafka records of one send: ``wait`` returns once Kafka acknowledged every one of them.

    Each connector waits on its own deliveries only, so one source's failed
    record can never be reported to (and swallowed by) another source.
    """

    def __init__(self, futures: Iterable[Any] = ()) -> None:
        self.futures = list(futures)

    def __add__(self, other: Delivery) -> Delivery:
        return Delivery([*self.futures, *other.futures])

    def wait(self, timeout: float = 60.0) -> None:
        """Block until every record is acknowledged; re-raise the first delivery error."""
        deadline = time.monotonic() + timeout
        for future in self.futures:
            future.get(timeout=max(deadline - time.monotonic(), 0.0))


class MentionProducer:
    """kafka-python producer for mentions, rejected items and connector heartbeats.

    ``send_mentions`` and ``send_rejected`` return a ``Delivery`` to wait on;
    heartbeats are fire-and-forget.
    """

    def __init__(self, bootstrap: list[str], *, topic_raw: str, topic_rejected: str,
                 topic_status: str | None = None, **producer_config: Any) -> None:
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "acks": "all",
            "linger_ms": 20,
            "client_id": "earful-connectors",
            **producer_config,
        }
        self._producer = KafkaProducer(**config)
        self.topic_raw = topic_raw
        self.topic_rejected = topic_rejected
        self.topic_status = topic_status
        partitions = self._producer.partitions_for(topic_raw)
        if not partitions:
            raise FatalError(f"topic {topic_raw!r} does not exist: run 'earful setup' first")
        self.partitions = len(partitions)

    def send_mentions(self, mentions: Iterable[Mention]) -> Delivery:
        """The mentions as pages; one too large for any record goes to the rejected topic instead."""
        records, refused = encode_pages(mentions, self.partitions)
        delivery = Delivery(self._producer.send(self.topic_raw, value=value, partition=partition)
                            for partition, value in records)
        for source, item in refused:
            delivery += self.send_rejected([item], source=source)
        return delivery

    def send_rejected(self, items: Iterable[RejectedItem], *, source: str) -> Delivery:
        return Delivery(self._producer.send(self.topic_rejected, key=source.encode(),
                                            value=rejected_record(item, source)) for item in items)

    def send_status(self, status: dict[str, Any]) -> None:
        if self.topic_status:
            self._producer.send(self.topic_status, key=str(status["connector"]).encode(),
                                value=orjson.dumps(status, default=str))

    def close(self) -> None:
        self._producer.close(timeout=10)


#: items/min is averaged over this many seconds: a source polled every few minutes still shows its rate
RATE_WINDOW = 900.0


@dataclass
class ConnectorStatus:
    """What a heartbeat says of one connector.

    ``state`` ok with a recent ``last_success`` and 0 items/min means the source
    works and nobody is talking; ``backoff``/``failing`` with ``last_error``
    means the source is down or refusing us; ``degraded`` means it is read, but
    ``last_error`` names parts of it (a feed, a subreddit) that failed.
    """

    connector: str
    state: str = "starting"
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    items_total: int = 0
    started: float = field(default_factory=time.time)
    _recent: list[tuple[float, int]] = field(default_factory=list)

    def record_success(self, items: int) -> None:
        now = time.time()
        self.state, self.last_success = "ok", now
        self.items_total += items
        self._recent.append((now, items))
        self._recent = [(t, n) for t, n in self._recent if now - t <= RATE_WINDOW]

    def items_per_min(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        window = min(RATE_WINDOW, max(now - self.started, 60.0))
        return round(sum(n for t, n in self._recent if now - t <= window) * 60.0 / window, 2)

    def record_error(self, state: str, message: str) -> None:
        self.state, self.last_error, self.last_error_at = state, message, time.time()

    def as_record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "connector": self.connector,
            "state": self.state,
            "at": utcnow().isoformat(),
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "items_total": self.items_total,
            "items_per_min": self.items_per_min(now),
        }


#: the shortest wait before asking again: "Retry-After: 0" or a reset already past must not spin
MIN_DELAY = 1.0


class Backoff:
    """Exponential backoff with full jitter above a floor of MIN_DELAY; ``retry_after`` from the platform wins."""

    def __init__(self, base: float = 1.0, cap: float = 300.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.failures += 1
        if retry_after is not None:
            return min(max(retry_after, MIN_DELAY), self.cap * 4)
        return max(random.uniform(0, min(self.cap, self.base * 2 ** (self.failures - 1))), MIN_DELAY)

    def reset(self) -> None:
        self.failures = 0


def _named(name: str, exc: Exception) -> str:
    """The error's message, starting with the connector's name once (connectors usually put it there)."""
    text = str(exc)
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


class _RateLimitedLog:
    """One log line per connector and error kind per ``every`` seconds."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)

    def error(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.every) >= self.every:
            suppressed = self._suppressed.pop(key, 0)
            suffix = f" ({suppressed} similar errors since the last report)" if suppressed else ""
            log.error(message + suffix, *args)
            self._last[key] = now
        else:
            self._suppressed[key] += 1


class Runner:
    """Runs connectors until they are done or ``stop()`` is called."""

    def __init__(self, producer: MentionProducer, cursors: CursorStore, *,
                 on_page: Callable[[str, Page], None] | None = None,
                 heartbeat_every: float = 30.0) -> None:
        self.producer = producer
        self.cursors = cursors
        self.on_page = on_page
        self.heartbeat_every = heartbeat_every
        self.statuses: dict[str, ConnectorStatus] = {}
        self._stop = asyncio.Event()
        self._errors = _RateLimitedLog()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, connectors: list[Connector], *, once: bool = False) -> None:
        try:
            await asyncio.gather(*(self._run_one(c, once=once) for c in connectors))
        finally:
            for connector in connectors:
                await connector.aclose()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _wait(self, status: ConnectorStatus, seconds: float) -> None:
        """Wait before the next poll, still beating: a long poll interval must not look like a dead source."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await self._sleep(min(left, self.heartbeat_every))
            if not self._stop.is_set() and deadline - time.monotonic() > 0:
                self.producer.send_status(status.as_record())

    async def _run_one(self, connector: Connector, *, once: bool) -> None:
        name = connector.name
        status = self.statuses.setdefault(name, ConnectorStatus(name))
        backoff = Backoff()
        cursor = self.cursors.load(name)
        last_beat = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_beat >= self.heartbeat_every:
                self.producer.send_status(status.as_record())
                last_beat = time.monotonic()
            try:
                page = await connector.poll(cursor)
            except RetriableError as exc:
                delay = backoff.next_delay(exc.retry_after)
                self._down(status, "backoff", str(exc), f"{name}:retriable", "%s; retrying in %.0fs",
                           _named(name, exc), delay)
                if once:
                    return
                await self._wait(status, delay)
                continue
            except FatalError as exc:
                self._down(status, "failing", str(exc), f"{name}:fatal", "%s cannot run: %s", name,
                           _named(name, exc).removeprefix(f"{name}: "))
                if once:
                    return
                await self._wait(status, max(backoff.next_delay(), 300.0))
                continue
            except Exception as exc:  # a bug or an unexpected answer: keep the other sources going
                delay = backoff.next_delay()
                self._down(status, "backoff", f"{type(exc).__name__}: {exc}", f"{name}:unexpected",
                           "%s failed unexpectedly: %r; retrying in %.0fs", name, exc, delay)
                if once:
                    return
                await self._wait(status, delay)
                continue
            try:
                await self._send(name, page)
            except Exception as exc:  # Kafka down or refusing: this source reads the page again later
                if once:
                    raise
                delay = backoff.next_delay()
                self._down(status, "backoff", f"Kafka did not acknowledge the page: {type(exc).__name__}: {exc}",
                           f"{name}:kafka", "%s: Kafka did not acknowledge %d mentions (%r); the cursor stays "
                           "put and the page is read again in %.0fs", name, len(page.mentions), exc, delay)
                await self._wait(status, delay)
                continue
            try:
                self.cursors.save(name, page.next_cursor)
            except Exception as exc:  # a full disk, say: the page is in Kafka, so the source reads on
                self._errors.error(f"{name}:cursor", "%s: could not save the cursor (%r); reading on from "
                                   "memory, a restart would read from the last saved cursor again", name, exc)
            cursor = page.next_cursor
            backoff.reset()
            was = (status.state, status.last_error)
            status.record_success(len(page.mentions))
            if page.skipped:
                self._partly(name, status, page.skipped, was)
            if self.on_page is not None:
                self.on_page(name, page)
            if page.done or (once and not page.has_more):
                self.producer.send_status(status.as_record())
                return
            if page.rate_limited is not None:
                await self._wait(status, self._rate_limited(name, status, backoff, page.rate_limited))
            elif not page.has_more:
                await self._wait(status, connector.poll_interval)

    def _rate_limited(self, name: str, status: ConnectorStatus, backoff: Backoff, exc: RateLimited) -> float:
        """A rate limit met half-way through a poll: what was read is delivered; say so and how long to wait."""
        delay = backoff.next_delay(exc.retry_after)
        self._down(status, "backoff", str(exc), f"{name}:retriable",
                   "%s; delivered what was read, asking again in %.0fs", _named(name, exc), delay)
        return delay

    def _partly(self, name: str, status: ConnectorStatus, skipped: dict[str, str],
                was: tuple[str, str | None]) -> None:
        """Some parts of a source failed while the others were read: degraded, and said so
        (once a minute for the same parts)."""
        what = "; ".join(f"skipped {part}: {why}" for part, why in skipped.items())[:1000]
        status.record_error("degraded", what)
        if was != ("degraded", what):  # shown in a heartbeat at once, not a beat later
            self.producer.send_status(status.as_record())
        self._errors.error(f"{name}:skipped:{','.join(sorted(skipped))}", "%s: read, but %s", name, what)

    def _down(self, status: ConnectorStatus, state: str, error: str, key: str, message: str, *args: Any) -> None:
        """Record why a source is not reading, show it in a heartbeat at once (not a beat later),
        and log it (the same error once a minute)."""
        status.record_error(state, error)
        self.producer.send_status(status.as_record())
        self._errors.error(key, message, *args)

    async def _send(self, name: str, page: Page) -> None:
        """Send the page and wait for Kafka to acknowledge its own records."""
        def send_and_wait() -> None:
            # In a thread: a send blocks while the producer has no metadata or no buffer (Kafka
            # down), and waiting blocks until the acks; the other sources' loops go on meanwhile.
            delivery = Delivery()
            if page.mentions:
                delivery += self.producer.send_mentions(page.mentions)
            if page.rejected:
                delivery += self.producer.send_rejected(page.rejected, source=name)
            delivery.wait()

        await asyncio.get_running_loop().run_in_executor(None, send_and_wait)

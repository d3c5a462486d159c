"""From indexed mentions to per-window count records, and where each topic's counts live.

The index agent turns every indexed batch into one ``CountRecord`` per (topic, window): the
ids of that topic's mentions in that window, by source, with the distinct authors. A batch
of 2,000 mentions becomes a handful of records, so the counting agent writes its windowed
tables a few times per batch instead of once per mention.

Counting is by mention id, not by "was this document new to the index": the counting agent
keeps each open window's ids and counts an id once. A batch re-read after a crash (indexed
before, counted or not), a bulk request retried after a timeout, a post that a source
delivers twice: each mention is counted exactly once while its window is open.

Count records are keyed and partitioned by topic (``partition_for``), so one worker owns
each topic's windows, detector state and alert lifecycle. The same function tells a
worker which topics it must close windows for when its clock ticks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import faust
from kafka.partitioner.default import murmur2

__all__ = ["CountRecord", "author_key", "count_records", "most_specific", "partition_for", "uncounted",
           "window_start"]


class CountRecord(faust.Record, serializer="json"):
    """What crosses the counts topic: a count delta, or a clock tick for one partition.

    ``kind="delta"``: ``count`` mentions of ``topic`` in the window starting at ``window``
    (epoch seconds), ``by_source`` per source, ``ids`` their mention ids per source,
    ``authors`` their distinct author keys.
    ``kind="tick"``: windows ending at or before ``until`` are complete; ``now`` stamps alerts.
    """

    kind: str
    topic: str = ""
    window: float = 0.0
    count: int = 0
    by_source: dict[str, int] = {}  # noqa: RUF012 - faust copies field defaults per record
    authors: list[str] = []  # noqa: RUF012
    ids: dict[str, list[str]] = {}  # noqa: RUF012
    until: float = 0.0
    now: float = 0.0


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key``: Kafka's default (murmur2) partitioner, as producers use it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def window_start(ts: float, window_seconds: float) -> float:
    return math.floor(ts / window_seconds) * window_seconds


def author_key(author: str | None, source: str) -> str | None:
    """A short stable key per (source, author): counts distinct people without keeping handles."""
    if not author:
        return None
    return hashlib.blake2b(f"{source}\x1f{author}".encode(), digest_size=8).hexdigest()


def most_specific(tags: Iterable[str], parents: Mapping[str, str | None]) -> list[str]:
    """The tags without the ancestors of other tags: "portal down" counts as outage, not also as
    its parent online_services, so one spike raises one alert. A parent counts the mentions that
    none of its children explain."""
    tags = list(dict.fromkeys(tags))
    ancestors: set[str] = set()
    for tag in tags:
        parent, hops = parents.get(tag), 0
        while parent is not None and hops < 32:
            ancestors.add(parent)
            parent, hops = parents.get(parent), hops + 1
    return [t for t in tags if t not in ancestors]


def count_records(docs: Iterable[dict[str, Any]], window_seconds: float,
                  parents: Mapping[str, str | None] | None = None, since: float | None = None) -> list[CountRecord]:
    """One delta record per (topic, window) for the indexed documents of a batch.

    Mentions created before ``since`` (epoch seconds) are left out: their windows are older
    than the counting tables keep (a backfill of last year's posts is indexed, not counted).
    """
    acc: dict[tuple[str, float], dict[str, Any]] = {}
    for doc in docs:
        tags = most_specific(doc.get("tags") or (), parents or {})
        if not tags:
            continue
        created = doc["created_at"]
        ts = (datetime.fromisoformat(created) if isinstance(created, str) else created).timestamp()
        if since is not None and ts < since:
            continue
        window = window_start(ts, window_seconds)
        source = str(doc.get("source", ""))
        who = author_key(doc.get("author"), source)
        for topic in tags:
            slot = acc.setdefault((topic, window), {"ids": {}, "authors": set()})
            slot["ids"].setdefault(source, {})[doc["id"]] = None
            if who is not None:
                slot["authors"].add(who)
    records = []
    for (topic, window), slot in sorted(acc.items()):
        ids = {source: list(found) for source, found in slot["ids"].items()}
        by_source = {source: len(found) for source, found in ids.items()}
        records.append(CountRecord(kind="delta", topic=topic, window=window, count=sum(by_source.values()),
                                   by_source=by_source, ids=ids, authors=sorted(slot["authors"])))
    return records


def uncounted(record: CountRecord, counted: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """The ids of ``record`` not in ``counted`` (its window's ids so far), and their number per
    source. A record without ids (from an older worker) counts as it says."""
    if not record.ids:
        return [], dict(record.by_source)
    known = set(counted)
    added: list[str] = []
    per_source: dict[str, int] = {}
    for source, ids in record.ids.items():
        for mention in ids:
            if mention not in known:
                known.add(mention)
                added.append(mention)
                per_source[source] = per_source.get(source, 0) + 1
    return added, per_source

"""What ``earful status`` shows: indexed mentions per topic and source, consumer lag, connectors."""

from __future__ import annotations

import time
from typing import Any

from streams.settings import Settings, es_client_kwargs


def indexed_counts(settings: Settings) -> dict[str, Any]:
    from elasticsearch import Elasticsearch

    es = Elasticsearch(**es_client_kwargs(settings))
    try:
        out: dict[str, Any] = {"total": es.count(index=settings.index_mentions)["count"]}
        for label, since in (("last_hour", "now-1h"), ("last_day", "now-1d")):
            response = es.search(
                index=settings.index_mentions, size=0,
                query={"range": {"tagged_at": {"gte": since}}},
                aggs={"topics": {"terms": {"field": "tags", "size": 50}},
                      "sources": {"terms": {"field": "source", "size": 50}}},
            )
            aggs = response["aggregations"]
            out[label] = {
                "mentions": response["hits"]["total"]["value"],
                "topics": {b["key"]: b["doc_count"] for b in aggs["topics"]["buckets"]},
                "sources": {b["key"]: b["doc_count"] for b in aggs["sources"]["buckets"]},
            }
        return out
    finally:
        es.close()


def consumer_lag(settings: Settings) -> dict[str, Any]:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers, client_id="earful-status")
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, client_id="earful-status",
                             enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(settings.topic_raw) or set()
        tps = [TopicPartition(settings.topic_raw, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(tps)
        committed = committed_offsets(admin, settings.app_id)
        per_partition = {}
        for tp in tps:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else 0
            per_partition[tp.partition] = max(ends[tp] - position, 0)
        return {"group": settings.app_id, "topic": settings.topic_raw,
                "lag": sum(per_partition.values()), "partitions": per_partition}
    finally:
        consumer.close()
        admin.close()


def committed_offsets(admin: Any, group: str) -> dict[Any, Any]:
    """The group's committed offsets by partition, across kafka-python's 2.x and 3.x calls
    (3.x renamed the call and keys its answer by group id)."""
    list_offsets = getattr(admin, "list_consumer_group_offsets", None) or admin.list_group_offsets
    committed = list_offsets(group)
    if group in committed and isinstance(committed[group], dict):
        committed = committed[group]
    return dict(committed)


def connector_heartbeats(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """The latest heartbeat of each connector, read from the tail of the status topic."""
    from connectors.cli import read_heartbeats

    return read_heartbeats(settings, timeout=timeout)


def collect(settings: Settings) -> dict[str, Any]:
    return {
        "indexed": indexed_counts(settings),
        "consumer": consumer_lag(settings),
        "connectors": connector_heartbeats(settings),
    }


def render(report: dict[str, Any]) -> str:
    lines = []
    indexed = report["indexed"]
    lines.append(f"mentions indexed: {indexed['total']}")
    for label in ("last_hour", "last_day"):
        block = indexed[label]
        lines.append(f"  {label.replace('_', ' ')}: {block['mentions']}")
        for kind in ("topics", "sources"):
            if block[kind]:
                parts = ", ".join(f"{k} {v}" for k, v in block[kind].items())
                lines.append(f"    by {kind[:-1]}: {parts}")
    consumer = report["consumer"]
    lines.append(f"consumer lag ({consumer['group']} on {consumer['topic']}): {consumer['lag']} records")
    connectors = report["connectors"]
    if connectors:
        lines.append("connectors:")
        now = time.time()
        for name, beat in sorted(connectors.items()):
            last = beat.get("last_success")
            ago = f"{now - last:.0f}s ago" if isinstance(last, (int, float)) else "never"
            error = f"; last error: {beat['last_error']}" if beat.get("last_error") else ""
            heard = _heard(beat.get("at"), now)
            lines.append(f"  {name}: {beat.get('state')}, last success {ago}, "
                         f"{beat.get('items_per_min', 0)} items/min, heard {heard}{error}")
    else:
        lines.append("connectors: no heartbeat yet")
    return "\n".join(lines)


def _heard(at: Any, now: float) -> str:
    """How long ago the heartbeat was sent: a connector process that died stops beating."""
    from datetime import datetime

    try:
        return f"{now - datetime.fromisoformat(str(at)).timestamp():.0f}s ago"
    except ValueError:
        return "at an unknown time"

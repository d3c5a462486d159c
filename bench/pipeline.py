"""End-to-end throughput on the running servers, three ways, same data, same servers.

- ceiling: a plain kafka-python consume + Elasticsearch bulk loop (no validation, no tagging);
- worker: the real ``earful worker`` process (validate, dedupe, tag, index, reject, count);
- naive: a per-event Faust agent (bench/naive.py): per mention validate, tag, ``await
  topic.send()`` and a table write; the ratio is taken against it. Also measured: the same
  agent doing the whole job, with one ``await es.index()`` per mention.

Rates are mentions (events) per second, measured from the first mention handled to the
last, so consumer-group start-up is not counted against anyone. The worker and the naive
agent are watched through their committed offsets, not by counting the index while it is
being written (a count costs the search server as much as a bulk request).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from elasticsearch import Elasticsearch
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from bench.data import real_mentions
from connectors.runner import encode_pages
from schemas import Mention
from streams import devstack
from streams.settings import Settings, es_client_kwargs, load_settings
from streams.status import committed_offsets

ROOT = Path(__file__).resolve().parents[1]


def _produce_pages(settings: Settings, topic: str, mentions: list[Mention]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_servers, acks="all", linger_ms=20)
    for partition, value in encode_pages(mentions, settings.raw_partitions).records:
        producer.send(topic, value=value, partition=partition)
    producer.flush()
    producer.close()


def _produce_single(settings: Settings, topic: str, mentions: list[Mention]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_servers, acks="all", linger_ms=20)
    for mention in mentions:
        producer.send(topic, key=mention.id.encode(), value=mention.model_dump_json().encode())
    producer.flush()
    producer.close()


def _topics(settings: Settings, tag: str) -> dict[str, str]:
    names = {"raw": f"bench.raw.{tag}", "rejected": f"bench.rejected.{tag}", "counts": f"bench.counts.{tag}"}
    devstack.create_topics(settings, {names["raw"]: settings.raw_partitions, names["rejected"]: 1,
                                      names["counts"]: settings.raw_partitions})
    return names


def ceiling(settings: Settings, mentions: list[Mention]) -> float:
    tag = uuid.uuid4().hex[:8]
    topics = _topics(settings, tag)
    index = f"earful-mentions-bench-ceiling-{tag}"
    _produce_pages(settings, topics["raw"], mentions)
    es = Elasticsearch(**es_client_kwargs(settings))
    consumer = KafkaConsumer(topics["raw"], bootstrap_servers=settings.kafka_servers, group_id=f"ceiling-{tag}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_records=500)
    done, started = 0, None
    action = b'{"index":{"_index":' + orjson.dumps(index) + b',"_id":'
    try:
        while done < len(mentions):
            polled = consumer.poll(timeout_ms=1000, max_records=500)
            operations: list[bytes] = []
            for messages in polled.values():
                for message in messages:
                    for doc in orjson.loads(message.value)["mentions"]:
                        operations.append(action + orjson.dumps(doc["id"]) + b"}}")
                        operations.append(orjson.dumps(doc))
            if not operations:
                continue
            started = started or time.perf_counter()
            es.bulk(operations=operations)
            consumer.commit()
            done += len(operations) // 2
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
    return done / elapsed


class _Progress:
    """How far a consumer group is through a topic, read from its committed offsets.

    The worker commits a record's offset only once its mentions are indexed (or rejected),
    so "every offset committed" means "everything indexed". Watching offsets asks nothing
    of the search server: polling it with counts while it indexes would slow it down, and
    the ceiling loop is not slowed that way either.
    """

    def __init__(self, settings: Settings, group: str, topic: str) -> None:
        self.group = group
        self.admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers)
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers)
        try:
            self.tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            self.ends = consumer.end_offsets(self.tps)
        finally:
            consumer.close()

    def fraction(self) -> float:
        """Share of the topic's records the group has committed (0 until it has joined)."""
        try:
            committed = committed_offsets(self.admin, self.group)
        except Exception:  # noqa: BLE001 - the group may not exist yet
            return 0.0
        done = sum(min(max(committed[tp].offset, 0), self.ends[tp]) for tp in self.tps if tp in committed)
        return done / max(sum(self.ends.values()), 1)

    def done(self) -> bool:
        return self.fraction() >= 1.0

    def close(self) -> None:
        self.admin.close()


def _rate(es: Elasticsearch, index: str, progress: _Progress, total: int, timeout: float,
          proc: subprocess.Popen[bytes]) -> float:
    """Mentions/s from the first indexed mention until the group has committed every record."""
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the benchmarked worker exited with code {proc.returncode}")
        if first is None:
            count = _indexed(es, index)()
            if count:
                first = (time.perf_counter(), count)
        elif progress.done():
            elapsed = time.perf_counter() - first[0]
            indexed = _indexed(es, index)()
            if indexed < total:
                raise RuntimeError(f"every record committed but only {indexed} of {total} mentions indexed")
            return (indexed - first[1]) / max(elapsed, 1e-9)
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s")


def _start(module: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-m", *module], env=env, stdout=handle,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _env(settings: Settings, tag: str, topics: dict[str, str], index: str) -> dict[str, str]:
    return {**os.environ, "EARFUL_APP_ID": f"bench-{tag}", "EARFUL_TOPIC_RAW": topics["raw"],
            "EARFUL_TOPIC_REJECTED": topics["rejected"], "EARFUL_TOPIC_COUNTS": topics["counts"],
            "EARFUL_INDEX_MENTIONS": index, "EARFUL_CONFIG_FILE": "/nonexistent/earful.yaml"}


def worker(settings: Settings, mentions: list[Mention], log_dir: Path) -> float:
    tag = uuid.uuid4().hex[:8]
    topics = _topics(settings, tag)
    index = f"earful-mentions-bench-worker-{tag}"
    _produce_pages(settings, topics["raw"], mentions)
    es = Elasticsearch(**es_client_kwargs(settings))
    proc = _start(["streams", "worker", "--loglevel", "warning"], _env(settings, tag, topics, index),
                  log_dir / "bench-worker.log")

    progress = _Progress(settings, f"bench-{tag}", topics["raw"])
    try:
        return _rate(es, index, progress, len(mentions), 600, proc)
    finally:
        _stop(proc)
        progress.close()
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()


def _indexed(es: Elasticsearch, index: str) -> Callable[[], int]:
    def count() -> int:
        if not es.indices.exists(index=index):
            return 0
        return int(es.count(index=index)["count"])
    return count


def _rate_by_offsets(progress: _Progress, total: int, timeout: float, proc: subprocess.Popen[bytes]) -> float:
    """Mentions/s between the first commit seen and the last (one mention per record)."""
    deadline = time.monotonic() + timeout
    first: tuple[float, float] | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the benchmarked agent exited with code {proc.returncode}")
        fraction, now = progress.fraction(), time.perf_counter()
        if first is None and fraction > 0:
            first = (now, fraction)
        elif first is not None and fraction >= 1.0:
            return (1.0 - first[1]) * total / max(now - first[0], 1e-9)
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s")


def naive(settings: Settings, mentions: list[Mention], log_dir: Path, *, index_each: bool) -> float:
    """The per-event agent; with ``index_each`` it also indexes every mention itself."""
    tag = uuid.uuid4().hex[:8]
    topics = _topics(settings, tag)
    index = f"earful-mentions-bench-naive-{tag}"
    _produce_single(settings, topics["raw"], mentions)
    es = Elasticsearch(**es_client_kwargs(settings))
    env = {**_env(settings, tag, topics, index), "EARFUL_BENCH_NAIVE_INDEX": "1" if index_each else ""}
    proc = _start(["bench.naive"], env, log_dir / f"bench-naive-{int(index_each)}.log")
    progress = _Progress(settings, f"bench-{tag}", topics["raw"])
    try:
        if index_each:
            return _rate(es, index, progress, len(mentions), 600, proc)
        return _rate_by_offsets(progress, len(mentions), 600, proc)
    finally:
        _stop(proc)
        progress.close()
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()


def run(log_dir: Path, total: int | None = None, naive_total: int = 5000) -> dict[str, float]:
    settings = load_settings()  # a bad value says which variable, never the value
    mentions = real_mentions(total)
    figures = {"mentions": float(len(mentions))}

    def measured(name: str, value: float) -> None:
        figures[name] = value
        print(f"  {name:<36} {value:,.0f}", flush=True)

    print(f"== pipeline: {len(mentions):,} real posts, Kafka -> worker -> Elasticsearch (mentions/s)", flush=True)
    measured("ceiling_mentions_per_s", ceiling(settings, mentions))
    measured("worker_mentions_per_s", worker(settings, mentions, log_dir))
    # The naive agent of the comparison: per event, await send + table write (no search server).
    measured("naive_mentions_per_s", naive(settings, mentions[:naive_total], log_dir, index_each=False))
    # The same agent doing the whole job, one index request per mention.
    measured("naive_indexing_each_mentions_per_s",
             naive(settings, mentions[:naive_total], log_dir, index_each=True))
    figures["ratio_to_ceiling"] = figures["worker_mentions_per_s"] / figures["ceiling_mentions_per_s"]
    figures["speedup_vs_naive"] = figures["worker_mentions_per_s"] / figures["naive_mentions_per_s"]
    figures["speedup_vs_naive_indexing_each"] = (figures["worker_mentions_per_s"]
                                                 / figures["naive_indexing_each_mentions_per_s"])
    print(f"  {'speedup_vs_naive_indexing_each':<36} {figures['speedup_vs_naive_indexing_each']:,.2f}", flush=True)
    return figures

"""The search server refuses the worker's bulk requests for a while: nothing is lost.

The worker talks to Elasticsearch through a small proxy that forwards every request, except
that it can answer the bulk requests itself with an error status, as a cluster does when it is
overloaded (503, 429) or when the worker's API key has expired (401).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer

from schemas import Mention
from tests.integration.conftest import Stack, consume_all, wait_for
from tests.integration.faulty_proxy import FaultyProxy


@pytest.fixture
def proxy(stack: Stack) -> Iterator[FaultyProxy]:
    with FaultyProxy(stack.settings.es_url) as p:
        yield p


def _send(stack: Stack, tag: str, n: int) -> set[str]:
    now = datetime.now(UTC)
    mentions = [Mention.build(source="mastodon", native_id=f"{tag}-{i}", created_at=now,
                              text=f"myGov is down again, can't lodge ({tag} {i})") for i in range(n)]
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_servers)
    for m in mentions:
        producer.send(stack.settings.topic_raw, key=m.id.encode(), value=m.model_dump_json().encode())
    producer.flush()
    producer.close()
    return {m.id for m in mentions}


def _indexed(stack: Stack) -> set[str]:
    es = stack.es()
    try:
        if not es.indices.exists(index=stack.settings.index_mentions):
            return set()
        es.indices.refresh(index=stack.settings.index_mentions)
        hits = es.search(index=stack.settings.index_mentions, size=1000, source_includes=["id"])["hits"]["hits"]
        return {h["_source"]["id"] for h in hits}
    finally:
        es.close()


@pytest.mark.parametrize("status", [503, 401])
def test_bulk_requests_refused_for_a_while_lose_nothing(stack: Stack, proxy: FaultyProxy, status: int) -> None:
    worker = stack.start_worker(EARFUL_ES_URL=proxy.url)
    first = _send(stack, "before", 5)
    wait_for(lambda: first <= _indexed(stack) or None, timeout=90, what="the first mentions")

    proxy.set_refuse(status)
    during = _send(stack, "during", 20)
    wait_for(lambda: proxy.refused_so_far() >= 6 or None, timeout=60, what="refused bulk requests")
    assert worker.poll() is None, stack.worker_logs()
    proxy.set_refuse(None)

    wait_for(lambda: (first | during) <= _indexed(stack) or None, timeout=90,
             what="the mentions held while the search server refused them")


def test_a_worker_stopped_while_the_search_server_refuses_exits_without_committing_the_batch(
        stack: Stack, proxy: FaultyProxy) -> None:
    worker = stack.start_worker(EARFUL_ES_URL=proxy.url)
    first = _send(stack, "before", 5)
    wait_for(lambda: first <= _indexed(stack) or None, timeout=90, what="the first mentions")
    _first_committed(stack)

    proxy.set_refuse(503)
    during = _send(stack, "during", 20)
    wait_for(lambda: proxy.refused_so_far() >= 2 or None, timeout=60, what="a refused bulk request")
    # A graceful stop in the middle of the retries: the worker stops by itself (it is not
    # left waiting for a batch it cannot store) and commits nothing of that batch.
    assert stack.stop_worker(worker, timeout=60) == 0, stack.worker_logs()
    assert "without acknowledging" in stack.logs[-1].read_text(errors="replace")
    _assert_not_committed(stack, during)

    # The next worker reads the held records, also on a partition with no committed offset yet.
    proxy.set_refuse(None)
    stack.start_worker(EARFUL_ES_URL=proxy.url)
    wait_for(lambda: (first | during) <= _indexed(stack) or None, timeout=90,
             what="the held mentions, read again after the restart")


def test_a_batch_that_fails_unexpectedly_stops_the_worker_without_committing_it(
        stack: Stack, proxy: FaultyProxy) -> None:
    worker = stack.start_worker(EARFUL_ES_URL=proxy.url)
    first = _send(stack, "before", 5)
    wait_for(lambda: first <= _indexed(stack) or None, timeout=90, what="the first mentions")
    _first_committed(stack)

    proxy.set_garble(True)  # a gateway answers the bulk request with something else
    during = _send(stack, "during", 20)
    wait_for(lambda: worker.poll() is not None or None, timeout=90, what="the worker to stop")
    assert worker.returncode != 0
    assert "could not be stored" in stack.logs[-1].read_text(errors="replace")
    _assert_not_committed(stack, during)

    proxy.set_garble(False)
    stack.start_worker(EARFUL_ES_URL=proxy.url)
    wait_for(lambda: (first | during) <= _indexed(stack) or None, timeout=90,
             what="the batch that failed, read again after the restart")


def _committed(stack: Stack) -> dict[int, int]:
    """The worker group's committed offset per partition of the raw topic."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=stack.settings.kafka_servers)
    try:
        offsets = admin.list_group_offsets({stack.settings.app_id: None}).get(stack.settings.app_id) or {}
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == stack.settings.topic_raw}


def _first_committed(stack: Stack) -> None:
    """Wait until the worker has committed the first mentions: the group's offsets are there to check."""
    wait_for(lambda: _committed(stack) or None, timeout=30, what="the first mentions' offsets committed")


def _assert_not_committed(stack: Stack, ids: set[str]) -> None:
    """The worker group's committed offsets stop at or before the first of ``ids`` on every
    partition, so whoever reads the topic next reads all of them."""
    records = consume_all(stack.settings, stack.settings.topic_raw, expect=10**9, timeout=3)
    first_held: dict[int, int] = {}
    for record in records:
        if record.key is not None and record.key.decode() in ids:
            first_held[record.partition] = min(first_held.get(record.partition, record.offset), record.offset)
    assert sum(1 for r in records if r.key is not None and r.key.decode() in ids) == len(ids)
    committed = _committed(stack)
    assert committed, "the group has no committed offsets: the check below would prove nothing"
    past = {p: offset for p, offset in committed.items() if p in first_held and offset > first_held[p]}
    assert not past, f"committed past held records: {past}, first held offsets {first_held}"

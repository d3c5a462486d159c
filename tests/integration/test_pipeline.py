"""End to end over real servers: replay → Kafka → worker process → Elasticsearch."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import orjson
from kafka import KafkaProducer

from schemas import Mention, mention_id
from streams.tagging import Tagger
from tests.integration.conftest import ROOT, Stack, consume_all, wait_for

AIRLINE_TAXONOMY = ROOT / "deploy" / "taxonomies" / "airline.yaml"


def _unique_rows(path: Path, id_col: str) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            rows[row[id_col]] = row  # the replay keeps the last copy of a duplicated id, as here
    return rows


def _all_docs(stack: Stack) -> list[dict]:
    es = stack.es()
    try:
        es.indices.refresh(index=stack.settings.index_mentions)
        docs, after = [], None
        while True:
            page = es.search(index=stack.settings.index_mentions, size=5000, sort=[{"id": "asc"}],
                             search_after=after, query={"match_all": {}})
            hits = page["hits"]["hits"]
            if not hits:
                return docs
            docs.extend(h["_source"] | {"_id": h["_id"]} for h in hits)
            after = hits[-1]["sort"]
    finally:
        es.close()


def test_replayed_posts_are_searchable_exactly_once_with_their_tags(stack: Stack, data_dir: Path) -> None:
    path = data_dir / "airline-sentiment" / "tweets.csv"
    rows = _unique_rows(path, "tweet_id")
    assert len(rows) >= 5000
    worker = stack.start_worker(EARFUL_TAXONOMY=str(AIRLINE_TAXONOMY))
    stack.earful("replay", str(path), "--source", "airline", "--as-fast-as-possible", "--keep-time", "--quiet")

    wait_for(lambda: stack.count() >= len(rows), timeout=240, what=f"{len(rows)} indexed mentions")
    assert worker.poll() is None, stack.worker_logs()
    docs = _all_docs(stack)

    # Exactly once: one document per post, its id the stable mention id.
    assert len(docs) == len(rows)
    by_native = {d["native_id"]: d for d in docs}
    assert set(by_native) == set(rows)
    assert all(d["_id"] == mention_id("airline", d["native_id"]) for d in docs)

    # The tags are what the tagger says of each text, with the reasons kept.
    tagger = Tagger.load(AIRLINE_TAXONOMY)
    mismatched = []
    for native_id, row in rows.items():
        doc = by_native[native_id]
        expected = tagger.tag(doc["text"]).tags
        if doc["tags"] != expected:
            mismatched.append((native_id, doc["tags"], expected))
        assert doc["text"] == row["text"].strip()
    assert not mismatched, mismatched[:5]
    tagged = [d for d in docs if d["tags"]]
    assert len(tagged) > 1000  # the airline taxonomy speaks to most complaints
    assert all(d["why"] and {w["topic"] for w in d["why"]} >= set(d["tags"]) for d in tagged)

    # Searchable: full text finds a known post.
    sample = next(iter(rows.values()))
    es = stack.es()
    try:
        hits = es.search(index=stack.settings.index_mentions,
                         query={"match_phrase": {"text": sample["text"].strip()[:60]}})["hits"]["hits"]
    finally:
        es.close()
    assert mention_id("airline", sample["tweet_id"]) in {h["_id"] for h in hits}


def test_malformed_records_land_in_rejected_with_a_reason(stack: Stack) -> None:
    good = Mention.build(source="test", native_id="ok-1", text="myGov is down again",
                         created_at="2026-11-23T09:00:00Z")  # type: ignore[arg-type]
    bad_records = {
        b"this is not json": "not JSON",
        b"[1, 2, 3]": "expected a JSON object",
        orjson.dumps({"mentions": "nope"}): "'mentions' must be a list",
        orjson.dumps({"id": "x", "source": "test", "native_id": "1", "created_at": "2026-11-23T00:00:00Z"}):
            "text: Field required",
        orjson.dumps({**good.model_dump(mode="json"), "id": "y", "native_id": "2",
                      "created_at": "yesterday"}): "created_at",
        orjson.dumps({**good.model_dump(mode="json"), "id": "z", "native_id": "3", "source": "Bad Source!"}):
            "source",
        orjson.dumps({**good.model_dump(mode="json"), "id": "w", "native_id": "4", "text": "   "}): "text",
    }
    # A page mixing a good mention with a bad one: the good one is indexed, the bad one rejected.
    mixed = orjson.dumps({"mentions": [good.model_dump(mode="json"), {"text": "no id"}]})
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_servers, acks="all")
    for value in [*bad_records, mixed]:
        producer.send(stack.settings.topic_raw, value=value, partition=0)
    producer.flush()
    producer.close()

    stack.start_worker()
    expected = len(bad_records) + 1
    rejected = consume_all(stack.settings, stack.settings.topic_rejected, expect=expected, timeout=120)
    assert len(rejected) == expected, stack.worker_logs()
    records = [orjson.loads(m.value) for m in rejected]
    by_payload = {r["payload"]: r for r in records}
    for value, reason_part in bad_records.items():
        record = by_payload.get(value.decode())
        assert record is not None, f"{value!r} was not found in the rejected topic"
        assert reason_part in record["reason"], record
        assert record["topic"] == stack.settings.topic_raw
        assert record["offset"] is not None
    assert any("id: Field required" in r["reason"] and "no id" in r["payload"] for r in records)
    wait_for(lambda: stack.count() == 1, timeout=60, what="the good mention of the mixed page")


def test_worker_killed_mid_replay_loses_and_duplicates_nothing(stack: Stack, data_dir: Path) -> None:
    path = data_dir / "twcs" / "twcs_first5000.csv"
    rows = _unique_rows(path, "tweet_id")
    stack.earful("replay", str(path), "--source", "twcs", "--as-fast-as-possible", "--keep-time", "--quiet")
    small_batches = {"EARFUL_BATCH_SIZE": "100", "EARFUL_BATCH_WITHIN": "0.2"}
    first = stack.start_worker(**small_batches)
    wait_for(lambda: stack.count() >= 200, timeout=120, what="the first indexed mentions")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = stack.count()
    assert killed_at < len(rows), "the worker finished before it could be killed mid-replay"

    stack.start_worker(**small_batches)
    wait_for(lambda: stack.count() >= len(rows), timeout=180, what="every mention after the restart")
    docs = _all_docs(stack)
    assert len(docs) == len(rows)
    assert {d["native_id"] for d in docs} == set(rows)

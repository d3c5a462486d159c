"""The worker's decode and validate step: what is indexed, and what is rejected with why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from schemas import Mention, TagReason, mention_id
from streams.pipeline import RawRecord, prepare, refused_document, tag


def _record(value: object) -> RawRecord:
    return RawRecord(orjson.dumps(value), "mentions.raw", 0, 7)


def test_a_post_sent_under_two_ids_is_stored_once_and_the_stranger_id_rejected() -> None:
    good = Mention.build(source="mastodon", native_id="109", text="myGov is down again",
                         created_at="2026-11-23T09:00:00Z")  # type: ignore[arg-type]
    stranger = {**good.model_dump(mode="json"), "id": "my-own-id"}
    batch, mentions = prepare([_record(good.model_dump(mode="json")), _record({"mentions": [stranger]})])
    assert [m.id for m in mentions] == [good.id]
    [rejected] = batch.rejected
    assert rejected.reason == f"id: 'my-own-id' is not mention_id(source, native_id) = {good.id!r}"
    assert orjson.loads(rejected.payload)["id"] == "my-own-id" and rejected.offset == 7


def test_copies_of_one_mention_in_a_batch_are_one_mention() -> None:
    good = Mention.build(source="reddit", native_id="t3_x", text="where is my refund",
                         created_at="2026-11-23T09:00:00Z")  # type: ignore[arg-type]
    batch, mentions = prepare([_record(good.model_dump(mode="json"))] * 3)
    assert [m.id for m in mentions] == [good.id] and batch.duplicates_in_batch == 2 and not batch.rejected


def test_an_id_is_made_from_the_fields_as_stored_so_padding_never_gets_a_mention_rejected() -> None:
    padded = Mention.build(source="mastodon ", native_id=" p-1 ", text="ATO portal down",
                           created_at="2026-11-23T09:00:00Z")  # type: ignore[arg-type]
    assert padded.native_id == "p-1" and padded.id == mention_id("mastodon", "p-1")
    batch, mentions = prepare([_record(padded.model_dump(mode="json"))])
    assert [m.id for m in mentions] == [padded.id] and not batch.rejected


def test_the_latest_copy_of_a_mention_in_a_batch_wins() -> None:
    # An edited post fetched twice before one batch was indexed: the index keeps the edit.
    first = Mention.build(source="reddit", native_id="t3_y", text="portal down",
                          created_at="2026-11-23T09:00:00Z")  # type: ignore[arg-type]
    edited = first.model_copy(update={"text": "portal down (edit: back up now)"})
    batch, mentions = prepare([_record(first.model_dump(mode="json")), _record(edited.model_dump(mode="json"))])
    assert [m.text for m in mentions] == ["portal down (edit: back up now)"]
    assert batch.duplicates_in_batch == 1


@dataclass
class _Outcome:
    tags: list[str]
    why: list[TagReason]
    scores: dict[str, float]
    detected_lang: str | None
    sentiment: float | None


class _Tagger:
    version = "tax-agency@test"

    def __init__(self, outcome: _Outcome) -> None:
        self.outcome = outcome
        self.texts: list[str] = []
        self.langs: list[str | None] = []

    def tag(self, text: str, lang: str | None = None) -> _Outcome:
        return self.tag_many([text], [lang])[0]

    def tag_many(self, texts: Sequence[str], langs: Sequence[str | None] | None = None) -> list[_Outcome]:
        self.texts.extend(texts)
        self.langs.extend(langs if langs is not None else [None] * len(texts))
        return [self.outcome for _ in texts]


def test_the_indexed_document_carries_the_mention_and_its_tagging() -> None:
    original = Mention.build(source="x", native_id="1", text="ATO site down", created_at="2026-11-23T09:00:00Z",
                             lang="en")  # type: ignore[arg-type]
    repost = Mention.build(source="x", native_id="2", text="RT ATO site down", created_at="2026-11-23T09:01:00Z",
                           repost_of="1")  # type: ignore[arg-type]
    reason = TagReason(topic="outage", rule="outage.phrase", tier="rule", span=(4, 13), matched="site down")
    tagger = _Tagger(_Outcome(["outage"], [reason], {"outage": 1.0}, "en", -0.4))
    docs = tag([original, repost], tagger)
    assert tagger.texts == ["ATO site down", "RT ATO site down"]
    assert tagger.langs == ["en", None]  # the source's own language tag picks per-language terms
    first, second = docs
    assert (first["id"], first["is_repost"], second["is_repost"]) == (original.id, False, True)
    assert second["repost_of"] == "1"
    assert first["tags"] == ["outage"] and first["scores"] == {"outage": 1.0}
    assert first["why"] == [{"topic": "outage", "rule": "outage.phrase", "tier": "rule", "span": [4, 13],
                             "matched": "site down"}]
    assert (first["sentiment"], first["detected_lang"], first["taxonomy_version"]) == (-0.4, "en", "tax-agency@test")
    assert first["tagged_at"] == second["tagged_at"]

    unscored = tag([original], _Tagger(_Outcome([], [], {}, None, None)))[0]
    assert "sentiment" not in unscored and "detected_lang" not in unscored  # none, rather than a made-up 0
    assert unscored["tags"] == [] and unscored["lang"] == "en"


def test_a_created_at_out_of_range_in_utc_is_rejected_naming_the_field() -> None:
    # Valid ISO 8601, but before the first instant a UTC datetime can hold: this used to
    # raise out of the worker (OverflowError) on every restart instead of being rejected.
    early = Mention.build(source="rss", native_id="a", text="ATO news",
                          created_at="2026-11-23T09:00:00Z").model_dump(mode="json")  # type: ignore[arg-type]
    good = Mention.build(source="rss", native_id="b", text="ATO news",
                         created_at="2026-11-23T09:00:00Z")  # type: ignore[arg-type]
    early["created_at"] = "0001-01-01T00:00:00+05:00"
    batch, mentions = prepare([_record(early), _record(good.model_dump(mode="json"))])
    assert [m.id for m in mentions] == [good.id]
    [rejected] = batch.rejected
    assert rejected.reason.startswith("invalid mention: created_at: ")
    assert "out of range once converted to UTC" in rejected.reason


def test_a_record_with_no_value_is_rejected_not_a_crash() -> None:
    batch, mentions = prepare([RawRecord(None, "mentions.raw", 2, 40)])
    assert mentions == []
    [rejected] = batch.rejected
    assert rejected.reason == "no value: the record is empty (a tombstone), not a mention"
    assert (rejected.payload, rejected.partition, rejected.offset) == ("", 2, 40)


def test_a_rejected_payload_cut_to_size_says_so_in_its_reason() -> None:
    whole = b"{" + b"x" * 150_000  # not JSON, and larger than a rejection keeps
    batch, _ = prepare([RawRecord(whole, "mentions.raw", 0, 1)])
    [rejected] = batch.rejected
    assert rejected.payload == whole[:100_000].decode()
    assert rejected.reason.startswith("not JSON: ")
    assert rejected.reason.endswith("(payload cut to its first 100,000 of 150,001 characters)")
    small = b"{" + b"x" * 10
    [kept] = prepare([RawRecord(small, "mentions.raw", 0, 2)])[0].rejected
    assert kept.payload == small.decode() and "cut" not in kept.reason


def test_a_refused_document_too_large_for_a_rejection_is_cut_and_says_so() -> None:
    doc = {"id": "m1", "text": "x" * 200_000}
    big = refused_document(doc, "mapper_parsing_exception: failed to parse [text]", "earful-mentions")
    assert len(big.payload) == 100_000 and big.payload.startswith('{"id":"m1"')
    assert big.reason == ("mapper_parsing_exception: failed to parse [text] "
                          f"(payload cut to its first 100,000 of {len(orjson.dumps(doc)):,} characters)")
    assert len(big.model_dump_json()) < 1_000_000  # fits in a Kafka record
    small = refused_document({"id": "m2"}, "refused", "earful-mentions")
    assert (small.payload, small.reason, small.topic) == ('{"id":"m2"}', "refused", "index:earful-mentions")

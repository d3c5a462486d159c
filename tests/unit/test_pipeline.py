"""The worker's decode and validate step: what is indexed, and what is rejected with why."""

from __future__ import annotations

import orjson

from schemas import Mention, mention_id
from streams.pipeline import RawRecord, prepare


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

"""What the worker does to a batch of Kafka records, as plain functions.

decode → validate → dedupe within the batch → tag → Elasticsearch documents.

Nothing here touches Kafka or Elasticsearch, so the stream and the batch
commands share it and unit tests need no server. A record is either one
mention (a JSON object) or a page of them (``{"mentions": [...]}``); anything
that is not a valid mention becomes a ``Rejected`` with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from schemas import Mention, Rejected, TagReason, mention_id, utcnow


class TagOutcome(Protocol):
    tags: list[str]
    why: list[TagReason]
    scores: dict[str, float]
    detected_lang: str | None
    sentiment: float | None


class TaggerLike(Protocol):
    version: str

    def tag(self, text: str, lang: str | None = None) -> TagOutcome: ...

    def tag_many(self, texts: Sequence[str], langs: Sequence[str | None] | None = None) -> Sequence[TagOutcome]: ...


@dataclass(frozen=True)
class RawRecord:
    value: bytes | None  # None: a record with no value (a tombstone)
    topic: str
    partition: int | None = None
    offset: int | None = None


@dataclass
class Batch:
    """The outcome of one batch: documents to index, rejections, and event counts."""

    docs: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    records: int = 0
    mentions_in: int = 0
    duplicates_in_batch: int = 0


# A rejected record carries at most this much of what was refused: a whole page of
# mentions, escaped once more inside the rejection, would not fit in a Kafka record.
MAX_REJECTED_PAYLOAD = 100_000


def _reject(record: RawRecord, reason: str, payload: Any = None) -> Rejected:
    if payload is None:
        text = (record.value or b"").decode("utf-8", errors="replace")
    else:
        text = payload if isinstance(payload, str) else orjson.dumps(payload, default=str).decode()
    text, reason = _cut(text, reason)
    return Rejected(reason=reason, payload=text, topic=record.topic,
                    partition=record.partition, offset=record.offset)


def _cut(payload: str, reason: str) -> tuple[str, str]:
    """The payload a rejection keeps, and its reason, which says when the payload was cut."""
    if len(payload) <= MAX_REJECTED_PAYLOAD:
        return payload, reason
    return (payload[:MAX_REJECTED_PAYLOAD],
            f"{reason} (payload cut to its first {MAX_REJECTED_PAYLOAD:,} of {len(payload):,} characters)")


def explain(error: ValidationError) -> str:
    """A one-line reason naming each bad field."""
    parts = []
    for err in error.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "invalid mention: " + "; ".join(parts)


def decode(record: RawRecord) -> tuple[list[Any], Rejected | None]:
    """The mention objects a record carries, or the reason it carries none."""
    if record.value is None:
        return [], _reject(record, "no value: the record is empty (a tombstone), not a mention")
    try:
        loaded = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        return [], _reject(record, f"not JSON: {exc}")
    if isinstance(loaded, dict) and "mentions" in loaded:
        mentions = loaded["mentions"]
        if not isinstance(mentions, list):
            return [], _reject(record, "'mentions' must be a list")
        return mentions, None
    if isinstance(loaded, dict):
        return [loaded], None
    return [], _reject(record, f"expected a JSON object, got {type(loaded).__name__}")


def validate(record: RawRecord, items: Iterable[Any], batch: Batch) -> list[Mention]:
    mentions = []
    for item in items:
        batch.mentions_in += 1
        if not isinstance(item, dict):
            batch.rejected.append(_reject(record, f"expected a JSON object, got {type(item).__name__}", item))
            continue
        try:
            mention = Mention.model_validate(item)
        except ValidationError as exc:
            batch.rejected.append(_reject(record, explain(exc), item))
            continue
        expected = mention_id(mention.source, mention.native_id)
        if mention.id != expected:
            # Ids dedupe: a post sent twice under two ids would be stored twice.
            batch.rejected.append(_reject(record, f"id: {mention.id!r} is not mention_id(source, native_id) "
                                                  f"= {expected!r}", item))
            continue
        mentions.append(mention)
    return mentions


def to_document(mention: Mention, tagger: TaggerLike, tagged_at: datetime,
                outcome: TagOutcome | None = None) -> dict[str, Any]:
    if outcome is None:
        outcome = tagger.tag(mention.text, mention.lang)
    doc = mention.model_dump(mode="json", exclude_none=True)
    doc["tags"] = outcome.tags
    doc["why"] = [reason.model_dump(mode="json", exclude_none=True) for reason in outcome.why]
    doc["scores"] = outcome.scores
    if outcome.sentiment is not None:
        doc["sentiment"] = outcome.sentiment
    if outcome.detected_lang is not None:
        doc["detected_lang"] = outcome.detected_lang
    doc["is_repost"] = mention.repost_of is not None
    doc["tagged_at"] = tagged_at.isoformat()
    doc["taxonomy_version"] = tagger.version
    return doc


def prepare(records: Sequence[RawRecord]) -> tuple[Batch, list[Mention]]:
    """Decode and validate a batch of records: the valid mentions (deduplicated), the rest rejected."""
    batch = Batch(records=len(records))
    by_id: dict[str, Mention] = {}
    for record in records:
        items, rejected = decode(record)
        if rejected is not None:
            batch.rejected.append(rejected)
            batch.mentions_in += 1
            continue
        for mention in validate(record, items, batch):
            if mention.id in by_id:
                batch.duplicates_in_batch += 1
            by_id[mention.id] = mention  # the latest copy wins, as it would in the index
    return batch, list(by_id.values())


def tag(mentions: Sequence[Mention], tagger: TaggerLike) -> list[dict[str, Any]]:
    """The documents of ``mentions``: tagged in one call (the learned tier scores them at once)."""
    tagged_at = utcnow()
    outcomes = tagger.tag_many([m.text for m in mentions], [m.lang for m in mentions])
    return [to_document(m, tagger, tagged_at, o) for m, o in zip(mentions, outcomes, strict=True)]


def refused_document(doc: dict[str, Any], reason: str, index: str) -> Rejected:
    """A document the search server refused for good: kept, with why, on the rejected topic."""
    text, reason = _cut(orjson.dumps(doc).decode(), reason)
    return Rejected(reason=reason, payload=text, topic=f"index:{index}")

"""The records that cross Kafka: the one place where a field is defined.

    Mention          what a connector saw (topic ``mentions.raw``)
    MentionPage      a page of mentions carried by one Kafka record
    TaggedMention    a Mention plus what the tagger made of it (Elasticsearch)
    Rejected         a record that failed validation, with the reason
    Alert            an alert episode through its lifecycle (topic ``alerts``)

Timestamps are timezone-aware UTC; a naive timestamp is read as UTC.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1


def mention_id(source: str, native_id: str) -> str:
    """Stable id of a mention: the same post from the same source always gets the same id."""
    digest = hashlib.sha1(f"{source}\x1f{native_id}".encode()).hexdigest()
    return digest[:24]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+05:00 is before the first representable UTC instant: a bad
        # value for this field, reported as one (a ValueError), not a crash.
        raise ValueError("out of range once converted to UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Geo(_Record):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Engagement(_Record):
    likes: int | None = Field(default=None, ge=0)
    reposts: int | None = Field(default=None, ge=0)
    replies: int | None = Field(default=None, ge=0)
    views: int | None = Field(default=None, ge=0)


class Mention(_Record):
    id: str = Field(min_length=1, max_length=64,
                    description="mention_id(source, native_id): the first 24 hex digits of "
                                "SHA-1(source + U+001F + native_id), UTF-8; the worker refuses any other")
    source: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")
    native_id: str = Field(min_length=1, max_length=512)
    text: str = Field(min_length=1, max_length=100_000)
    created_at: UtcDatetime
    fetched_at: UtcDatetime = Field(default_factory=utcnow)
    url: str | None = None
    author: str | None = Field(default=None, max_length=512)
    lang: str | None = Field(default=None, max_length=16)
    reply_to: str | None = None
    repost_of: str | None = None
    engagement: Engagement | None = None
    query: str | None = None
    geo: Geo | None = None
    raw: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is newer than this worker ({SCHEMA_VERSION})")
        return value

    @classmethod
    def build(cls, *, source: str, native_id: str, **fields: Any) -> Mention:
        """A Mention with its id derived from (source, native_id), as the record keeps them
        (surrounding whitespace stripped)."""
        source, native_id = source.strip(), str(native_id).strip()
        return cls(id=mention_id(source, native_id), source=source, native_id=native_id, **fields)


class MentionPage(_Record):
    """One Kafka record carrying many mentions: the per-record cost is paid once per page."""

    mentions: list[dict[str, Any]]
    schema_version: int = SCHEMA_VERSION


class TagReason(_Record):
    topic: str
    rule: str
    tier: Literal["rule", "model"] = "rule"
    span: tuple[int, int] | None = None
    matched: str | None = None
    score: float | None = None


class TaggedMention(Mention):
    tags: list[str] = Field(default_factory=list)
    why: list[TagReason] = Field(default_factory=list)
    scores: dict[str, float] = Field(default_factory=dict)
    sentiment: float | None = None
    detected_lang: str | None = None
    is_repost: bool = False
    tagged_at: UtcDatetime = Field(default_factory=utcnow)
    taxonomy_version: str | None = None


class Rejected(_Record):
    reason: str
    payload: str = Field(description="the record as it arrived (decoded as UTF-8 with replacement)")
    topic: str
    partition: int | None = None
    offset: int | None = None
    rejected_at: UtcDatetime = Field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION


Severity = Literal["info", "minor", "major", "critical"]
AlertStatus = Literal["open", "update", "resolved"]


class AlertSample(_Record):
    id: str
    source: str
    text: str
    url: str | None = None
    created_at: UtcDatetime | None = None


class Alert(_Record):
    id: str
    topic: str
    source: str | None = None
    status: AlertStatus
    severity: Severity
    opened_at: UtcDatetime
    updated_at: UtcDatetime
    resolved_at: UtcDatetime | None = None
    window_start: UtcDatetime
    observed: float
    expected: float
    score: float = Field(ge=0, le=1)
    peak_observed: float | None = None
    authors: int | None = Field(default=None, ge=0, description="distinct authors in the window (topic-wide alerts)")
    top_terms: list[str] = Field(default_factory=list)
    samples: list[AlertSample] = Field(default_factory=list)
    config_version: str | None = None
    kibana_url: str | None = None
    sequence: int = Field(default=0, ge=0, description="event number within the episode")
    schema_version: int = SCHEMA_VERSION

"""Records that cross Kafka, their JSON Schema, and the Elasticsearch index templates."""

from schemas.records import (
    SCHEMA_VERSION,
    Alert,
    AlertSample,
    Engagement,
    Geo,
    Mention,
    MentionPage,
    Rejected,
    TaggedMention,
    TagReason,
    mention_id,
    utcnow,
)
from schemas.templates import index_templates

__all__ = [
    "SCHEMA_VERSION",
    "Alert",
    "AlertSample",
    "Engagement",
    "Geo",
    "Mention",
    "MentionPage",
    "Rejected",
    "TagReason",
    "TaggedMention",
    "index_templates",
    "mention_id",
    "utcnow",
]

"""JSON Schema of every record that crosses Kafka, by topic role.

Producers outside earful (another team's collector, a vendor feed) validate against these;
``earful schema`` prints them. They are derived from the records in ``schemas.records``,
the one place where a field is defined, so they cannot drift from what the worker accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.records import Alert, Mention, MentionPage, Rejected, TaggedMention

__all__ = ["RECORDS", "schema"]

#: record name -> (model, the topic setting it travels on, what it is)
RECORDS: dict[str, tuple[type[BaseModel], str, str]] = {
    "mention": (Mention, "topic_raw", "one mention per record"),
    "mention-page": (MentionPage, "topic_raw", "a page of mentions in one record (what connectors send)"),
    "tagged-mention": (TaggedMention, "index_mentions", "a mention as indexed, with its tags and why"),
    "rejected": (Rejected, "topic_rejected", "a record the worker could not accept, with the reason"),
    "alert": (Alert, "topic_alerts", "one event (open, update, resolved) of an alert"),
}


def schema(name: str) -> dict[str, Any]:
    model, where, what = RECORDS[name]
    out = model.model_json_schema()
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out.setdefault("description", what)
    out["x-earful-topic-setting"] = where
    return out

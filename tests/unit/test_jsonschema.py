"""The JSON Schema that outside producers validate against accepts what the worker accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from click.testing import CliRunner

from schemas import Mention, MentionPage
from schemas.jsonschema import RECORDS, schema
from streams.cli import cli


def test_every_record_has_a_schema_with_its_topic() -> None:
    for name in RECORDS:
        doc = schema(name)
        assert doc["type"] == "object" and doc["properties"], name
        assert doc["x-earful-topic-setting"].startswith(("topic_", "index_"))
    mention = schema("mention")
    assert {"id", "source", "native_id", "text", "created_at"} <= set(mention["required"])
    assert "mentions" in schema("mention-page")["required"]


def test_a_connector_page_matches_its_schema_fields() -> None:
    m = Mention.build(source="mastodon", native_id="1", text="myGov down?", created_at=datetime.now(UTC))
    page = json.loads(MentionPage(mentions=[m.model_dump(mode="json")]).model_dump_json())
    assert set(page) <= set(schema("mention-page")["properties"])
    assert set(page["mentions"][0]) <= set(schema("mention")["properties"])


def test_earful_schema_lists_and_prints() -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["schema"])
    assert listing.exit_code == 0 and "mention-page" in listing.output
    printed = runner.invoke(cli, ["schema", "alert"])
    assert printed.exit_code == 0 and json.loads(printed.output)["title"] == "Alert"
    unknown = runner.invoke(cli, ["schema", "nope"])
    assert unknown.exit_code != 0 and "one of: mention" in unknown.output

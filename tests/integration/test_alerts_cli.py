"""``earful alerts`` over the real search server: alerts and delivery records in this test's
own indices (the shipped strict templates apply), read back through the CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

from schemas.records import Alert, AlertSample, utcnow
from streams.alerting.delivery import DeliveryRecord
from streams.alerting.subscriptions import parse_subscriptions
from streams.cli import cli

pytestmark = pytest.mark.integration


SUBS = {s.name: s for s in parse_subscriptions([
    {"name": "ops-hook", "channel": {"type": "webhook", "url": "https://hooks.example/t/XXXXsecretXXXX",
                                     "secret": "hook-s3cret"}},
    {"name": "comms-slack", "channel": {"type": "slack", "url": "https://hooks.slack.example/services/T0"}},
])}


def _alert(alert_id: str, *, status: str, severity: str, age: timedelta, topic: str = "outage",
           source: str | None = None) -> Alert:
    updated = utcnow() - age
    opened = updated - timedelta(minutes=30)
    return Alert(
        id=alert_id, topic=topic, source=source, status=status, severity=severity,  # type: ignore[arg-type]
        opened_at=opened, updated_at=updated, resolved_at=updated if status == "resolved" else None,
        window_start=updated - timedelta(minutes=15), observed=120, expected=15, score=0.999,
        peak_observed=140 if status == "resolved" else None, top_terms=["portal", "down"],
        samples=[AlertSample(id="m1", source="mastodon", text="portal down?")],
        kibana_url=f"http://kibana.example/app/discover#/alert/{alert_id}", sequence=1,
    )


def _delivery(alert: Alert, sub: str, status: str, **changes: Any) -> dict[str, Any]:
    record = DeliveryRecord.new(alert, SUBS[sub], utcnow()).but(status=status, **changes)
    return record.model_dump(mode="json")


@pytest.fixture
def seeded(stack: Any) -> Any:
    critical = _alert("a-critical", status="update", severity="critical", age=timedelta(hours=2))
    minor = _alert("a-minor", status="open", severity="minor", age=timedelta(minutes=10),
                   topic="refunds", source="reddit")
    resolved = _alert("a-resolved", status="resolved", severity="major", age=timedelta(hours=1))
    old = _alert("a-old", status="resolved", severity="major", age=timedelta(days=3))
    records = [
        _delivery(critical, "ops-hook", "failed", attempts=4,
                  error="gave up after 4 attempts: https://hooks.example answered 500: boom"),
        _delivery(critical, "comms-slack", "sent", attempts=1),
        _delivery(minor, "ops-hook", "held", reason="quiet_hours", next_attempt_at=utcnow() + timedelta(hours=6)),
        _delivery(minor, "comms-slack", "pending", attempts=2, error="https://hooks.slack.example answered 503"),
        _delivery(old, "comms-slack", "failed", attempts=1, error="https://hooks.slack.example answered 404"),
        # Failed two days ago: outside the listing's 24h, inside the delivery log's 7 days.
        _delivery(old, "ops-hook", "failed", attempts=9, error="gave up", at=utcnow() - timedelta(days=2)),
    ]
    es = stack.es()
    try:
        for alert in (critical, minor, resolved, old):
            es.index(index=stack.settings.index_alerts, id=alert.id, document=alert.model_dump(mode="json"))
        for record in records:
            es.index(index=stack.settings.index_deliveries, id=record["id"], document=record)
        es.indices.refresh(index=[stack.settings.index_alerts, stack.settings.index_deliveries])
    finally:
        es.close()
    return stack


def _run(stack: Any, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["alerts", *args], env=stack.env)
    assert "Traceback" not in result.output
    return result


def _blocks(output: str) -> dict[str, str]:
    """Each alert's lines, keyed by alert id, in the order printed."""
    blocks: dict[str, str] = {}
    for block in output.strip().split("\n\n"):
        first = block.splitlines()[0]
        if "[" in first:
            blocks[first.rsplit("[", 1)[1].split(" ")[0]] = block
    return blocks


def test_open_alerts_first_with_deliveries_and_failures_called_out(seeded: Any) -> None:
    result = _run(seeded)
    assert result.exit_code == 0, result.output
    blocks = _blocks(result.output)
    # Open (most severe first), then resolved within 24h; the one resolved 3 days ago is left out.
    assert list(blocks) == ["a-critical", "a-minor", "a-resolved"]
    critical = blocks["a-critical"]
    assert critical.startswith("UPDATE critical  outage  [a-critical #1]")
    assert "120 mentions vs 15 expected" in critical and "top terms: portal, down" in critical
    assert "kibana: http://kibana.example/app/discover#/alert/a-critical" in critical
    assert "deliveries: 1 sent, 0 held, 0 pending, 1 FAILED" in critical
    assert "FAILED ops-hook (webhook) event #1 after 4 attempt(s)" in critical
    assert "https://hooks.example answered 500: boom" in critical
    minor = blocks["a-minor"]
    assert "refunds on reddit" in minor.splitlines()[0]
    assert "deliveries: 0 sent, 1 held, 1 pending" in minor and "FAILED" not in minor
    assert "deliveries: none" in blocks["a-resolved"]
    assert "peak 140" in blocks["a-resolved"]
    # The old alert is not listed, but its recent failed delivery is not silent either.
    assert "1 failed delivery in the last 24h of alerts not listed above" in result.output


def test_filters_and_json(seeded: Any) -> None:
    resolved = _blocks(_run(seeded, "--status", "resolved", "--since", "7d").output)
    assert list(resolved) == ["a-resolved", "a-old"]
    opened = _blocks(_run(seeded, "--status", "open", "--topic", "refunds").output)
    assert list(opened) == ["a-minor"]

    result = _run(seeded, "--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [a["id"] for a in report["alerts"]] == ["a-critical", "a-minor"]
    assert report["alerts"][0]["deliveries"]["counts"] == {"failed": 1, "sent": 1}
    assert report["alerts"][0]["deliveries"]["failed"][0]["subscription"] == "ops-hook"
    assert report["failed_deliveries_of_other_alerts"] == 1 and report["more"] == 1
    assert "... 1 more alert(s) match" in _run(seeded, "--limit", "2").output

    none = _run(seeded, "--status", "open", "--topic", "no-such-topic")
    assert none.exit_code == 0 and "no open alerts for topic 'no-such-topic'" in none.output


def test_delivery_log(seeded: Any) -> None:
    result = _run(seeded, "deliveries")
    assert result.exit_code == 0, result.output
    assert len([line for line in result.output.splitlines() if not line.startswith("    ")]) == 6
    assert "quiet_hours, next try" in result.output

    failed = _run(seeded, "deliveries", "--failed").output.splitlines()
    heads = [line for line in failed if not line.startswith("    ")]
    assert len(heads) == 3 and all("FAILED" in line for line in heads)
    assert any("comms-slack (slack)  outage [a-old #1 resolved]" in line for line in heads)
    assert "    https://hooks.slack.example answered 404" in failed

    one = json.loads(_run(seeded, "deliveries", "--alert", "a-minor", "--json").output)
    assert sorted(r["status"] for r in one) == ["held", "pending"]
    assert all("alert" not in r for r in one)


def test_no_alerts_yet_is_a_clear_error(stack: Any) -> None:
    result = _run(stack)
    assert result.exit_code == 1
    assert "no alerts yet" in result.output and stack.settings.index_alerts in result.output

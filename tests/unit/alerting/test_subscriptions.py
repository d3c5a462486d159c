from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from schemas.records import Alert
from streams.alerting.subscriptions import (
    QuietHours,
    SlackChannel,
    Subscription,
    SubscriptionError,
    load_subscriptions,
    parse_subscriptions,
    redact_url,
)

SECRET_URL = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX"
NOW = datetime(2024, 7, 1, 2, 0, tzinfo=UTC)


def alert(**fields: object) -> Alert:
    base: dict[str, object] = dict(
        id="a1", topic="outage", source=None, status="open", severity="major", opened_at=NOW,
        updated_at=NOW, window_start=NOW, observed=50, expected=10, score=0.99,
    )
    base.update(fields)
    return Alert.model_validate(base)


def sub(**fields: object) -> Subscription:
    base: dict[str, object] = {"name": "ops", "channel": {"type": "slack", "url": SECRET_URL}}
    base.update(fields)
    return Subscription.model_validate(base)


def test_loads_yaml_with_env_and_file_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_SLACK_URL", SECRET_URL)
    (tmp_path / "pd").write_text("routing-key-123\n")
    path = tmp_path / "subs.yaml"
    path.write_text(f"""
subscriptions:
  - name: comms
    topics: [outage, refund_delay]
    min_severity: major
    cooldown: 15m
    quiet_hours: {{start: "22:00", end: "07:00", timezone: Australia/Sydney}}
    channel: {{type: slack, url: "${{OPS_SLACK_URL}}"}}
  - name: oncall
    channel: {{type: pagerduty, routing_key: "${{file:{tmp_path / 'pd'}}}", url: "http://127.0.0.1:1/pd"}}
""")
    comms, oncall = load_subscriptions(path)
    assert isinstance(comms.channel, SlackChannel)
    assert comms.channel.url.get_secret_value() == SECRET_URL
    assert comms.cooldown == timedelta(minutes=15) and comms.quiet_hours is not None
    assert oncall.channel.routing_key.get_secret_value() == "routing-key-123"  # type: ignore[union-attr]
    assert SECRET_URL not in repr(comms)


def test_missing_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_URL", raising=False)
    with pytest.raises(SubscriptionError, match="environment variable NOPE_URL is not set"):
        parse_subscriptions([{"name": "x", "channel": {"type": "slack", "url": "${NOPE_URL}"}}])


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_env_var_is_named_like_a_missing_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       value: str) -> None:
    # docker compose hands the worker ${EARFUL_PAGERDUTY_ROUTING_KEY:-}: "" when .env left it out.
    monkeypatch.setenv("EARFUL_PAGERDUTY_ROUTING_KEY", value)
    with pytest.raises(SubscriptionError, match="environment variable EARFUL_PAGERDUTY_ROUTING_KEY is empty"):
        parse_subscriptions([{"name": "oncall", "channel": {
            "type": "pagerduty", "routing_key": "${EARFUL_PAGERDUTY_ROUTING_KEY}"}}])
    empty = tmp_path / "routing_key"
    empty.write_text(value + "\n")
    with pytest.raises(SubscriptionError, match=f"secret file {empty} is empty"):
        parse_subscriptions([{"name": "oncall", "channel": {"type": "pagerduty", "routing_key": f"${{file:{empty}}}"}}])


@pytest.mark.parametrize("url", [
    "ftp://hooks.example.com/services/XXXXsecretXXXX",
    "file:///etc/XXXXsecretXXXX",
    "hooks.example.com/XXXXsecretXXXX",
])
def test_non_http_urls_are_refused_without_showing_them(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SubscriptionError) as info:
        parse_subscriptions([{"name": "x", "channel": {"type": "webhook", "url": url, "secret": "hook-s3cret"}}])
    assert "must be an http(s) URL" in str(info.value) and "channel.webhook.url" in str(info.value)
    assert "secret" not in str(info.value)
    assert "secret" not in caplog.text


def test_errors_are_collected_and_clear() -> None:
    with pytest.raises(SubscriptionError) as info:
        parse_subscriptions([
            {"name": "a", "digest": "1h", "channel": {"type": "pagerduty", "routing_key": "k"}},
            {"name": "b", "min_severity": "loud", "channel": {"type": "sms"}},
            {"name": "c", "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"},
             "channel": {"type": "slack", "url": SECRET_URL}},
            {"name": "d", "cooldown": "soon", "channel": {"type": "slack", "url": SECRET_URL}},
        ])
    text = str(info.value)
    assert "digest does not apply to pagerduty" in text
    assert "subscription 'b'" in text and "min_severity" in text and "channel" in text
    assert "unknown time zone 'Mars/Olympus'" in text
    assert "duration like 30s" in text
    assert SECRET_URL not in text


def test_duplicate_names() -> None:
    entry = {"name": "a", "channel": {"type": "slack", "url": SECRET_URL}}
    with pytest.raises(SubscriptionError, match="used twice"):
        parse_subscriptions([entry, entry])


def test_redact_url_keeps_scheme_and_host() -> None:
    assert redact_url(SECRET_URL) == "https://hooks.slack.com"
    assert redact_url("https://user:pw@example.com:8443/x?token=1") == "https://example.com"
    assert redact_url("not a url") == "<invalid url>"


def test_matching_topics_sources_and_severity() -> None:
    s = sub(topics=["outage"], min_severity="major")
    assert s.matches(alert())
    assert not s.matches(alert(topic="scam"))
    assert not s.matches(alert(severity="minor"))
    assert s.matches(alert(severity="critical", status="resolved"))
    # Without sources: the topic-wide alert only, so one spike is one message.
    assert not s.matches(alert(source="reddit"))
    assert sub(sources=["reddit"]).matches(alert(source="reddit"))
    assert not sub(sources=["reddit"]).matches(alert(source=None))
    assert sub(sources=["*"], topics=["*"]).matches(alert(source="bluesky", topic="scam"))
    assert not sub(enabled=False).matches(alert())


def test_quiet_hours_across_midnight_in_sydney() -> None:
    quiet = QuietHours(start=time(22), end=time(7), timezone="Australia/Sydney")
    # 2024-07-01 is winter in Sydney: UTC+10.
    assert quiet.is_quiet(datetime(2024, 7, 1, 12, 30, tzinfo=UTC))  # 22:30 local
    assert quiet.is_quiet(datetime(2024, 7, 1, 20, 59, tzinfo=UTC))  # 06:59 local
    assert not quiet.is_quiet(datetime(2024, 7, 1, 21, 0, tzinfo=UTC))  # 07:00 local
    assert quiet.ends_after(datetime(2024, 7, 1, 12, 30, tzinfo=UTC)) == datetime(2024, 7, 1, 21, 0, tzinfo=UTC)
    # Summer (daylight saving, UTC+11): the same local end is an hour earlier in UTC.
    assert quiet.ends_after(datetime(2024, 12, 1, 12, 0, tzinfo=UTC)) == datetime(2024, 12, 1, 20, 0, tzinfo=UTC)


def test_quiet_hours_across_midnight_start_on_the_minute() -> None:
    quiet = QuietHours(start=time(22), end=time(7), timezone="UTC")
    day = datetime(2024, 7, 1, tzinfo=UTC)
    assert not quiet.is_quiet(day.replace(hour=21, minute=59))
    assert quiet.is_quiet(day.replace(hour=22))
    assert quiet.is_quiet(day.replace(hour=0))


def test_a_digest_period_is_at_least_a_minute() -> None:
    assert sub(digest="1m").digest == timedelta(minutes=1)
    with pytest.raises(ValueError, match="digest period must be at least 1m"):
        sub(digest="59s")


def test_quiet_hours_within_one_day() -> None:
    # A lunchtime window: quiet from 12:00 up to (not including) 14:00, loud the rest of the day.
    quiet = QuietHours(start=time(12), end=time(14), timezone="UTC")
    day = datetime(2024, 7, 1, tzinfo=UTC)
    assert not quiet.is_quiet(day.replace(hour=11, minute=59))
    assert quiet.is_quiet(day.replace(hour=12))
    assert quiet.is_quiet(day.replace(hour=13, minute=59))
    assert not quiet.is_quiet(day.replace(hour=14))
    assert not quiet.is_quiet(day.replace(hour=23, minute=30))
    assert quiet.ends_after(day.replace(hour=12, minute=30)) == day.replace(hour=14)


def test_digest_periods_align() -> None:
    s = sub(digest="1h")
    assert s.digest_due(datetime(2024, 7, 1, 9, 15, tzinfo=UTC)) == datetime(2024, 7, 1, 10, 0, tzinfo=UTC)


def test_an_unquoted_quiet_hours_time_is_read_as_written(tmp_path: Path) -> None:
    # YAML reads an unquoted 22:00 as the number 1320 (base 60); it must not become 00:22 UTC.
    path = tmp_path / "subs.yaml"
    path.write_text(f"""
- name: comms
  quiet_hours: {{start: 22:00, end: 7:30}}
  channel: {{type: slack, url: "{SECRET_URL}"}}
""")
    [sub] = load_subscriptions(path)
    assert sub.quiet_hours is not None
    assert (sub.quiet_hours.start, sub.quiet_hours.end) == (time(22, 0), time(7, 30))
    assert sub.quiet_hours.start.tzinfo is None


def test_a_number_that_is_no_time_of_day_is_refused_with_a_hint() -> None:
    with pytest.raises(SubscriptionError) as info:
        parse_subscriptions([{"name": "comms", "quiet_hours": {"start": 79200, "end": "07:00"},
                              "channel": {"type": "slack", "url": SECRET_URL}}])
    text = str(info.value)
    assert "subscription 'comms'" in text and "quiet_hours.start" in text
    assert 'quote the time, e.g. "22:00"' in text


@pytest.mark.parametrize("value", ["22:00Z", "22:00+10:00", "25:00", "10pm", "22:00:00"])
def test_quiet_hours_times_are_local_hh_mm_only(value: str) -> None:
    with pytest.raises(SubscriptionError) as info:
        parse_subscriptions([{"name": "comms", "quiet_hours": {"start": value, "end": "07:00"},
                              "channel": {"type": "slack", "url": SECRET_URL}}])
    assert "subscription 'comms'" in str(info.value) and "quiet_hours.start" in str(info.value)
    assert '"HH:MM"' in str(info.value)


def test_quiet_hours_time_with_a_zone_is_refused_in_code_too() -> None:
    with pytest.raises(ValueError, match="without a time zone"):
        QuietHours(start=time(22, tzinfo=UTC), end=time(7))


def test_quoted_quiet_hours_are_local_times() -> None:
    quiet = sub(quiet_hours={"start": "22:00", "end": "7:00"}).quiet_hours
    assert quiet is not None and quiet.start == time(22) and quiet.end == time(7)
    assert quiet.start.tzinfo is None
    assert quiet.is_quiet(datetime(2024, 7, 1, 12, 30, tzinfo=UTC))  # 22:30 in Sydney


def test_sources_without_per_source_alerts_are_refused_as_never_heard() -> None:
    entry = {"name": "reddit-watch", "sources": ["reddit"], "channel": {"type": "slack", "url": SECRET_URL}}
    with pytest.raises(SubscriptionError, match="'reddit-watch': it names sources, but alerting.per_source is off"):
        parse_subscriptions({"alerting": {"per_source": False}, "subscriptions": [entry]})
    with pytest.raises(SubscriptionError, match="per_source is off"):
        parse_subscriptions({"subscriptions": [entry]})
    [sub] = parse_subscriptions({"alerting": {"per_source": True}, "subscriptions": [entry]})
    assert sub.sources == ["reddit"]
    assert parse_subscriptions([entry])[0].name == "reddit-watch"  # a list alone: no config to check
    every = {**entry, "sources": ["*"]}  # every alert, the topic-wide ones included: fine either way
    assert parse_subscriptions({"subscriptions": [every]})[0].matches(Alert.model_validate(dict(
        id="a", topic="outage", status="open", severity="major", opened_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC), window_start=datetime(2026, 1, 1, tzinfo=UTC),
        observed=50, expected=10, score=0.99, sequence=0)))


def test_a_webhook_without_a_signing_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SubscriptionError, match=r"(?s)ops-hook.*channel\.webhook\.secret: Field required"):
        parse_subscriptions([{"name": "ops-hook", "channel": {"type": "webhook", "url": SECRET_URL}}])
    monkeypatch.setenv("HOOK_SECRET", "")  # an empty key signs nothing anyone could not forge
    for empty, says in (("", r"channel\.webhook\.secret"), ("${HOOK_SECRET}", "variable HOOK_SECRET is empty")):
        with pytest.raises(SubscriptionError, match=rf"(?s)ops-hook.*{says}"):
            parse_subscriptions([{"name": "ops-hook", "channel": {"type": "webhook", "url": SECRET_URL,
                                                                 "secret": empty}}])


def test_a_daily_digest_goes_out_at_the_subscribers_local_midnight() -> None:
    quiet = {"start": "12:00", "end": "13:00"}
    sydney = sub(digest="1d", quiet_hours={**quiet, "timezone": "Australia/Sydney"})
    # 14:00 on 10 January in Sydney (UTC+11): the day's digest goes at midnight there, not UTC.
    assert sydney.digest_due(datetime(2025, 1, 10, 3, 0, tzinfo=UTC)) == datetime(2025, 1, 10, 13, 0, tzinfo=UTC)
    # Winter (UTC+10).
    assert sydney.digest_due(datetime(2025, 7, 10, 3, 0, tzinfo=UTC)) == datetime(2025, 7, 10, 14, 0, tzinfo=UTC)
    # The day the clocks go back is 25 hours long, the day they go forward 23: still midnight to midnight.
    assert sydney.digest_due(datetime(2025, 4, 5, 14, 0, tzinfo=UTC)) == datetime(2025, 4, 6, 14, 0, tzinfo=UTC)
    assert sydney.digest_due(datetime(2025, 10, 4, 15, 0, tzinfo=UTC)) == datetime(2025, 10, 5, 13, 0, tzinfo=UTC)
    # Half an hour off UTC: Adelaide (UTC+10:30 in summer), Kolkata (UTC+5:30).
    adelaide = sub(digest="1d", quiet_hours={**quiet, "timezone": "Australia/Adelaide"})
    assert adelaide.digest_due(datetime(2025, 1, 10, 3, 0, tzinfo=UTC)) == datetime(2025, 1, 10, 13, 30, tzinfo=UTC)
    kolkata = sub(digest="1d", quiet_hours={**quiet, "timezone": "Asia/Kolkata"})
    assert kolkata.digest_due(datetime(2025, 1, 10, 3, 0, tzinfo=UTC)) == datetime(2025, 1, 10, 18, 30, tzinfo=UTC)
    # No time zone: UTC, as before.
    assert sub(digest="1d").digest_due(datetime(2025, 1, 10, 3, 0, tzinfo=UTC)) == datetime(2025, 1, 11, tzinfo=UTC)


def test_hourly_digests_stay_on_the_hour_across_dst() -> None:
    hourly = sub(digest="1h", quiet_hours={"start": "12:00", "end": "13:00", "timezone": "Australia/Sydney"})
    # Clocks go back at 16:00Z on 5 April 2025 (03:00 AEDT -> 02:00 AEST): every UTC hour still ends one.
    for minute in range(14 * 60, 19 * 60, 7):
        now = datetime(2025, 4, 5, tzinfo=UTC) + timedelta(minutes=minute)
        assert hourly.digest_due(now) == now.replace(minute=0) + timedelta(hours=1), now
    # And forward at 16:00Z on 4 October 2025 (02:00 AEST -> 03:00 AEDT).
    for minute in range(14 * 60, 19 * 60, 7):
        now = datetime(2025, 10, 4, tzinfo=UTC) + timedelta(minutes=minute)
        assert hourly.digest_due(now) == now.replace(minute=0) + timedelta(hours=1), now
    # In a zone half an hour off UTC, on the local hour.
    adelaide = sub(digest="1h", quiet_hours={"start": "12:00", "end": "13:00", "timezone": "Australia/Adelaide"})
    assert adelaide.digest_due(datetime(2025, 1, 10, 3, 10, tzinfo=UTC)) == datetime(2025, 1, 10, 3, 30, tzinfo=UTC)


def test_quiet_hours_end_once_when_the_clocks_go_back() -> None:
    quiet = QuietHours(start=time(22), end=time(2, 30), timezone="Australia/Sydney")
    # 6 April 2025: 03:00 AEDT (16:00Z) becomes 02:00 AEST, so 02:00-03:00 comes twice.
    first_pass = datetime(2025, 4, 5, 15, 10, tzinfo=UTC)  # 02:10 AEDT
    second_pass = datetime(2025, 4, 5, 16, 10, tzinfo=UTC)  # 02:10 AEST
    assert quiet.is_quiet(first_pass) and quiet.is_quiet(second_pass)
    assert quiet.ends_after(first_pass) == datetime(2025, 4, 5, 15, 30, tzinfo=UTC)  # 02:30 AEDT
    # Not 02:30 AEDT (15:30Z), already past: 02:30 AEST.
    assert quiet.ends_after(second_pass) == datetime(2025, 4, 5, 16, 30, tzinfo=UTC)
    assert not quiet.is_quiet(quiet.ends_after(second_pass))


def test_quiet_hours_end_when_the_clocks_go_forward_over_their_end() -> None:
    quiet = QuietHours(start=time(22), end=time(2, 30), timezone="Australia/Sydney")
    # 5 October 2025: 02:00 AEST (16:00Z) becomes 03:00 AEDT; 02:30 never comes.
    now = datetime(2025, 10, 4, 15, 10, tzinfo=UTC)  # 01:10 AEST
    assert quiet.ends_after(now) == datetime(2025, 10, 4, 16, 0, tzinfo=UTC)  # 03:00 AEDT, not 03:30
    assert not quiet.is_quiet(datetime(2025, 10, 4, 16, 0, tzinfo=UTC))
    # An end the clocks do not skip is unaffected that night.
    late = QuietHours(start=time(22), end=time(7), timezone="Australia/Sydney")
    assert late.ends_after(now) == datetime(2025, 10, 4, 20, 0, tzinfo=UTC)  # 07:00 AEDT


def test_refusal_says_why_and_an_all_clear_to_one_told_ignores_severity() -> None:
    s = sub(topics=["outage"], min_severity="critical")
    assert s.refusal(alert()) == "severity major is below the min_severity critical of subscription ops"
    assert s.refusal(alert(status="resolved")) is not None
    assert s.refusal(alert(status="resolved"), told=True) is None
    assert s.refusal(alert(status="update"), told=True) is not None  # only the all clear
    assert "does not cover topic 'scam'" in (s.refusal(alert(topic="scam", status="resolved"), told=True) or "")
    assert "disabled" in (sub(enabled=False).refusal(alert(status="resolved"), told=True) or "")

"""Counting records and closing windows: the alerting stream's logic without the servers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.records import AlertSample
from streams.alerting.counting import (
    CountRecord,
    author_key,
    count_records,
    most_specific,
    partition_for,
    uncounted,
    window_start,
)
from streams.alerting.watch import AlertingConfig, Watch

PARENTS = {"online_services": None, "outage": "online_services", "login_identity": "online_services",
           "refund_delay": None}
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC).timestamp()


def _doc(i: int, tags: list[str], *, at: float = T0, source: str = "mastodon", author: str | None = None) -> dict:
    return {"id": f"m{i}", "tags": tags, "source": source, "author": author or f"user{i}",
            "created_at": datetime.fromtimestamp(at, tz=UTC).isoformat()}


def test_a_mention_counts_for_its_most_specific_topics() -> None:
    assert most_specific(["online_services", "outage"], PARENTS) == ["outage"]
    assert most_specific(["online_services", "outage", "login_identity"], PARENTS) == ["outage", "login_identity"]
    assert most_specific(["online_services"], PARENTS) == ["online_services"]
    assert most_specific(["refund_delay", "outage", "outage"], {}) == ["refund_delay", "outage"]


def test_count_records_aggregate_a_batch_per_topic_and_window() -> None:
    docs = [
        _doc(1, ["online_services", "outage"], author="alice"),
        _doc(2, ["outage"], source="reddit", author="bob"),
        _doc(3, ["outage"], author="alice", at=T0 + 59),
        _doc(4, ["outage"], at=T0 + 60),
        _doc(5, []),
        _doc(6, ["refund_delay"], at=T0 + 5),
    ]
    records = {(r.topic, r.window): r for r in count_records(docs, 60, PARENTS)}
    assert set(records) == {("outage", T0), ("outage", T0 + 60), ("refund_delay", T0)}
    first = records[("outage", T0)]
    assert first.kind == "delta" and first.count == 3
    assert first.by_source == {"mastodon": 2, "reddit": 1}
    assert len(first.authors) == 2  # alice twice, bob once
    assert author_key("alice", "mastodon") in first.authors
    assert records[("outage", T0 + 60)].count == 1
    assert first.ids == {"mastodon": ["m1", "m3"], "reddit": ["m2"]}
    # Mentions older than the counting tables keep are indexed, not counted.
    recent = count_records(docs, 60, PARENTS, since=T0 + 60)
    assert [(r.topic, r.window, r.count) for r in recent] == [("outage", T0 + 60, 1)]


def test_a_mention_is_counted_once_however_often_it_is_indexed() -> None:
    docs = [_doc(1, ["outage"]), _doc(2, ["outage"], source="reddit"), _doc(3, ["outage"])]
    [first] = count_records(docs, 60, PARENTS)
    added, fresh = uncounted(first, [])
    assert sorted(added) == ["m1", "m2", "m3"] and fresh == {"mastodon": 2, "reddit": 1}
    # The same batch re-read after a crash (counted before or not), plus one new mention.
    [again] = count_records([*docs, _doc(4, ["outage"], source="reddit")], 60, PARENTS)
    added, fresh = uncounted(again, ["m1", "m2", "m3"])
    assert added == ["m4"] and fresh == {"reddit": 1}
    assert uncounted(first, ["m1", "m2", "m3"]) == ([], {})
    # A record of an older worker, without ids, counts as it says.
    legacy = CountRecord(kind="delta", topic="outage", window=T0, count=2, by_source={"rss": 2})
    assert uncounted(legacy, ["m1"]) == ([], {"rss": 2})


def test_partitions_follow_the_producers_default_partitioner() -> None:
    from kafka.partitioner.default import murmur2

    for topic in PARENTS:
        assert partition_for(topic, 4) == (murmur2(topic.encode()) & 0x7FFFFFFF) % 4
        assert 0 <= partition_for(topic, 4) < 4
    assert window_start(T0 + 59.9, 60) == T0


def _cfg() -> AlertingConfig:
    return AlertingConfig.from_config(
        {"detector": {"warmup_minutes": 10, "window_minutes": 0, "min_count": 5},
         "lifecycle": {"calm_windows": 2, "cooldown": "5m"}},
        window_seconds=60, kibana_url="http://kibana.example:5601", taxonomy_version="tax-agency@1")


async def _evidence(topic: str, source: str | None, start: datetime, end: datetime):
    return [AlertSample(id="m1", source="mastodon", text="myGov down?", url="https://m.example/1")], ["down"]


def _series(values: list[float]) -> list[tuple[float, float, int]]:
    # Distinct authors: most posts of a window come from different people.
    return [(T0 + 60 * i, v, int(v * 0.8)) for i, v in enumerate(values)]


QUIET = [1, 0, 2, 1, 0, 1, 1, 0, 2, 1, 0, 1, 1, 0, 1]
EPISODE = [*QUIET, 40, 90, 60, 1, 0, 1, 0, 1]


async def test_a_spike_opens_updates_and_resolves_one_alert() -> None:
    watch = Watch(_cfg())
    state, alerts = await watch.close(watch.new_state(T0), "outage", None, _series(EPISODE),
                                      datetime.now(UTC), _evidence)
    assert [a.status for a in alerts] == ["open", "update", "resolved"]
    assert len({a.id for a in alerts}) == 1
    opened = alerts[0]
    assert opened.observed == 40 and opened.expected < 5 and opened.top_terms == ["down"]
    assert opened.authors == 32 and alerts[1].authors == 72
    assert opened.samples[0].url == "https://m.example/1"
    assert opened.kibana_url and opened.kibana_url.startswith("http://kibana.example:5601/app/discover")
    assert opened.config_version and opened.config_version.endswith("+tax-agency@1")
    assert state["closed_until"] == T0 + 60 * len(EPISODE)


async def test_chatter_below_the_count_floor_after_a_spike_gives_the_all_clear() -> None:
    # After the spike the topic settles at 3-4 a minute: many times its usual fraction of a mention,
    # but under the detector's floor of 5, so the alert resolves rather than staying open for hours.
    watch = Watch(_cfg())
    _, alerts = await watch.close(watch.new_state(T0), "outage", None, _series([*QUIET, 40, 4, 3]),
                                  datetime.now(UTC), _evidence)
    assert [a.status for a in alerts] == ["open", "resolved"]
    assert alerts[1].window_start == datetime.fromtimestamp(T0 + 60 * (len(QUIET) + 2), tz=UTC)


async def test_quiet_windows_raise_nothing() -> None:
    watch = Watch(_cfg())
    _, alerts = await watch.close(watch.new_state(T0), "outage", None, _series(QUIET * 3),
                                  datetime.now(UTC), _evidence)
    assert alerts == []


@pytest.mark.parametrize("cut", [16, 17, 19])
async def test_state_carries_an_episode_across_a_restart(cut: int) -> None:
    """Closing windows in two runs, the state passed between them, is the same as one run."""
    watch = Watch(_cfg())
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    _, whole = await watch.close(watch.new_state(T0), "outage", None, _series(EPISODE), now, _evidence)
    state, first = await watch.close(watch.new_state(T0), "outage", None, _series(EPISODE)[:cut], now, _evidence)
    # A redelivered tick re-offers windows already closed: they are skipped.
    _, again = await watch.close(state, "outage", None, _series(EPISODE)[:cut], now, _evidence)
    assert again == []
    restarted = Watch(_cfg())
    _, rest = await restarted.close(state, "outage", None, _series(EPISODE)[cut:], now, _evidence)
    assert [a.model_dump() for a in first + rest] == [a.model_dump() for a in whole]


def test_windows_due_end_at_the_horizon() -> None:
    watch = Watch(_cfg())
    state = watch.new_state(T0)
    assert watch.due(state, T0 + 59) == []
    assert watch.due(state, T0 + 180) == [T0, T0 + 60, T0 + 120]


def test_unknown_alerting_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown settings"):
        AlertingConfig.from_config({"detectr": {}}, window_seconds=60)
    with pytest.raises(ValueError, match="unknown detector settings"):
        AlertingConfig.from_config({"detector": {"treshold": 0.5}}, window_seconds=60)


def test_the_shipped_config_has_valid_alerting_and_subscriptions() -> None:
    import yaml

    from streams.alerting.subscriptions import parse_subscriptions
    from streams.settings import PROJECT_ROOT

    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "earful.yaml").read_text())
    cfg = AlertingConfig.from_config(config["alerting"], window_seconds=60)
    assert cfg.detector.for_topic("scam_phishing").threshold < cfg.detector.threshold
    assert cfg.detector.overrides and cfg.lifecycle.calm_windows >= 1
    assert parse_subscriptions(config) == []


def test_the_delivery_section_sets_the_retry_policy() -> None:
    from datetime import timedelta

    cfg = AlertingConfig.from_config({"delivery": {"retry_backoff": "2s", "give_up_after": "2h", "retry_every": "5s"}},
                                     window_seconds=60)
    policy = cfg.delivery.policy()
    assert policy.retry_backoff == timedelta(seconds=2) and policy.give_up_after == timedelta(hours=2)
    assert policy.inline_attempts == 3 and cfg.delivery.retry_every == timedelta(seconds=5)
    with pytest.raises(ValueError, match="retry_backof"):
        AlertingConfig.from_config({"delivery": {"retry_backof": "2s"}}, window_seconds=60)
    assert AlertingConfig.from_config(None, window_seconds=60).delivery.retry_backoff == timedelta(minutes=1)


def test_one_handle_on_two_platforms_is_two_authors() -> None:
    # "alice" on Mastodon and "alice" on Reddit need not be one person: unique authors count both.
    assert author_key("alice", "mastodon") != author_key("alice", "reddit")
    assert author_key("alice", "mastodon") == author_key("alice", "mastodon")
    assert author_key(None, "mastodon") is None and author_key("", "reddit") is None

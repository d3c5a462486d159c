from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

from schemas.records import Alert, AlertSample
from streams.alerting.lifecycle import AlertTracker, LifecycleConfig, alert_id, kibana_discover_url
from streams.alerting.notifiers.render import title

T0 = datetime(2024, 7, 1, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
CFG = LifecycleConfig(
    calm_windows=3, calm_factor=1.2, update_factor=1.5, cooldown=timedelta(minutes=30),
    config_version="cfg-7", kibana_url="https://kibana.example.gov.au/", kibana_data_view="earful-mentions",
)
SAMPLE = AlertSample(id="m1", source="mastodon", text="is the portal down?", url="https://social.example/@a/1")


class Feed:
    """Drives a tracker minute by minute, the way the worker does."""

    def __init__(self, tracker: AlertTracker, start: datetime = T0) -> None:
        self.tracker = tracker
        self.t = start

    def step(self, observed: float, expected: float = 10.0, *, anomalous: bool | None = None,
             severity: str | None = "minor", source: str | None = None) -> Alert | None:
        if anomalous is None:
            anomalous = observed > expected * 3
        alert = self.tracker.step(
            topic="outage", source=source, window_start=self.t, observed=observed, expected=expected,
            score=0.99 if anomalous else 0.2, is_anomalous=anomalous, severity=severity if anomalous else None,
            samples=[SAMPLE] if anomalous else [], top_terms=["portal", "down"] if anomalous else [],
            now=self.t + MIN,
        )
        self.t += MIN
        return alert


def test_opens_once_with_evidence() -> None:
    feed = Feed(AlertTracker(CFG))
    assert feed.step(10) is None
    alert = feed.step(50)
    assert alert is not None and alert.status == "open" and alert.sequence == 0
    assert alert.id == alert_id("outage", None, T0 + MIN)
    assert (alert.observed, alert.expected, alert.severity) == (50, 10, "minor")
    assert alert.top_terms == ["portal", "down"] and alert.samples == [SAMPLE]
    assert alert.config_version == "cfg-7"
    assert alert.kibana_url is not None
    url = unquote(alert.kibana_url)
    assert url.startswith("https://kibana.example.gov.au/app/discover#/")
    assert 'tags:"outage"' in url and "earful-mentions" in url and "from:'2024-07-01T08:31:00Z',to:'2024-07-01T09:02:00Z'" in url
    # The same level the next minute is the same spike, not a new alert.
    assert feed.step(50) is None


def test_escalates_on_severity_or_meaningful_growth() -> None:
    feed = Feed(AlertTracker(CFG))
    opened = feed.step(50, severity="minor")
    assert opened is not None
    assert feed.step(60, severity="minor") is None  # grew, but by less than update_factor
    up = feed.step(62, severity="major")
    assert up is not None and up.status == "update" and up.severity == "major" and up.sequence == 1
    assert up.id == opened.id
    grown = feed.step(62 * 1.5, severity="minor")
    # Growth alone is an update; severity never drops within an episode.
    assert grown is not None and grown.sequence == 2 and grown.severity == "major"
    assert grown.peak_observed == 93


def test_a_window_the_detector_calls_normal_sends_no_update_however_much_it_grew() -> None:
    feed = Feed(AlertTracker(CFG))
    opened = feed.step(50)
    assert opened is not None
    # Twice the opening count, and not calm, but the baseline rose with it: no anomaly, no update.
    assert feed.step(100, expected=60, anomalous=False) is None
    up = feed.step(100, expected=10)  # the same count, now anomalous: the update comes
    assert up is not None and up.status == "update" and up.id == opened.id


def test_an_update_carries_at_most_max_samples() -> None:
    tracker = AlertTracker(CFG.model_copy(update={"max_samples": 2}))
    many = [SAMPLE.model_copy(update={"id": f"m{i}"}) for i in range(7)]
    events = [
        tracker.step(topic="outage", source=None, window_start=T0 + i * MIN, observed=observed, expected=10,
                     score=0.99, is_anomalous=True, severity="major", samples=many, top_terms=["portal"],
                     now=T0 + (i + 1) * MIN)
        for i, observed in enumerate((50, 100))
    ]
    assert [e.status for e in events if e is not None] == ["open", "update"]
    assert all([s.id for s in e.samples] == ["m0", "m1"] for e in events if e is not None)


def test_no_storm_during_a_long_spike() -> None:
    feed = Feed(AlertTracker(CFG))
    events = [feed.step(50 + (i % 7), severity="major") for i in range(240)]
    emitted = [e for e in events if e is not None]
    assert [e.status for e in emitted] == ["open"]


def test_resolves_only_after_consecutive_calm_windows() -> None:
    feed = Feed(AlertTracker(CFG))
    opened = feed.step(50)
    assert opened is not None
    # Below the alert threshold (3x expected) but above expected x calm_factor: not calm.
    assert [feed.step(25) for _ in range(10)] == [None] * 10
    assert feed.step(11) is None and feed.step(12) is None
    assert feed.step(20) is None  # a busy window restarts the calm count
    assert feed.step(9) is None and feed.step(10) is None
    resolved = feed.step(8)
    assert resolved is not None and resolved.status == "resolved" and resolved.id == opened.id
    assert resolved.resolved_at == feed.t and resolved.peak_observed == 50
    assert resolved.samples == [SAMPLE]  # the all clear still says what the episode was about
    assert feed.step(8) is None


def test_a_window_at_exactly_calm_factor_times_expected_is_calm() -> None:
    feed = Feed(AlertTracker(CFG))
    assert feed.step(50) is not None
    # 12 = 10 x 1.2: at the calm line counts as calm; three in a row give the all clear.
    assert feed.step(12) is None and feed.step(12) is None
    resolved = feed.step(12)
    assert resolved is not None and resolved.status == "resolved"


def test_cooldown_before_a_new_episode() -> None:
    feed = Feed(AlertTracker(CFG))
    first = feed.step(50)
    for _ in range(3):
        last = feed.step(5)
    assert last is not None and last.status == "resolved"
    # Past the 30 minute cooldown a new spike is a new episode, with a new alert.
    assert [feed.step(5) for _ in range(30)] == [None] * 30
    second = feed.step(60)
    assert second is not None and second.status == "open" and second.sequence == 0
    assert first is not None and second.id != first.id


def test_a_spike_within_the_cooldown_opens_the_same_alert_again() -> None:
    # Not dropped: the all clear was premature, and the alert says it is back.
    feed = Feed(AlertTracker(CFG))
    first = feed.step(50)
    resolved = [feed.step(5) for _ in range(3)][-1]
    assert first is not None and resolved is not None and resolved.status == "resolved"
    assert [feed.step(5) for _ in range(10)] == [None] * 10
    back = feed.step(400, severity="critical")
    assert back is not None and back.id == first.id
    assert (back.status, back.sequence, back.severity, back.observed) == ("open", 2, "critical", 400)
    assert back.resolved_at is None and back.peak_observed == 400 and back.opened_at == first.opened_at
    assert title(back).startswith("[CRITICAL] Spike back in") and title(first).startswith("[MINOR] Spike in")
    assert feed.step(400, severity="critical") is None  # the same level: nothing new to say
    # Having come back once, it needs twice the calm windows (6) before the next all clear.
    assert [feed.step(5) for _ in range(5)] == [None] * 5
    again = feed.step(5)
    assert again is not None and again.status == "resolved" and again.id == first.id and again.sequence == 3


def test_a_flapping_topic_sends_fewer_messages_each_time_it_comes_back() -> None:
    # Busy for 2 minutes, calm for 6, over and over for 3 hours: each return doubles the calm
    # needed, so after a few cycles the alert simply stays open until the topic settles.
    feed = Feed(AlertTracker(CFG))
    events = []
    for _ in range(180 // 8):
        events += [feed.step(60), feed.step(60)] + [feed.step(5) for _ in range(6)]
    sent = [e for e in events if e is not None]
    assert len({e.id for e in sent}) == 1
    assert [e.status for e in sent] == ["open", "resolved", "open", "resolved", "open"]
    # When it settles for good, one all clear, after the 3 x 2 x 2 = 12 calm windows it now needs.
    settled = [feed.step(5) for _ in range(24)]
    assert [e.status for e in settled if e is not None] == ["resolved"]


def test_a_window_below_the_count_floor_is_calm() -> None:
    # A topic with a mention every ten minutes: 30 in one minute is a spike, and 2 a minute after
    # it is over, whatever 2 / 0.1 says, since the detector could never open an alert on 2.
    feed = Feed(AlertTracker(CFG))
    opened = feed.step(30, expected=0.1)
    assert opened is not None

    def calm_step(observed: float) -> Alert | None:
        alert = feed.tracker.step(
            topic="outage", source=None, window_start=feed.t, observed=observed, expected=0.1, score=0.3,
            is_anomalous=False, severity=None, samples=[], top_terms=[], now=feed.t + MIN, calm_below=5.0,
        )
        feed.t += MIN
        return alert

    assert calm_step(2) is None and calm_step(4) is None
    resolved = calm_step(2)
    assert resolved is not None and resolved.status == "resolved"
    # At the floor itself the window is not calm: 5 could be a spike.
    feed2 = Feed(AlertTracker(CFG))
    feed2.step(30, expected=0.1)
    feed = feed2
    assert [calm_step(5) for _ in range(5)] == [None] * 5


def test_state_round_trip_mid_episode() -> None:
    feed = Feed(AlertTracker(CFG))
    opened = feed.step(50)
    assert opened is not None
    feed.step(5)
    # The worker restarts: state went through a Faust table (JSON).
    state = json.loads(json.dumps(feed.tracker.state()))
    restarted = Feed(AlertTracker.from_state(CFG, state), start=feed.t)
    # The count record for the last window is redelivered: it is not a second calm window.
    restarted.t -= MIN
    assert restarted.step(5) is None
    assert restarted.step(5) is None  # second calm window
    resolved = restarted.step(5)  # third
    assert resolved is not None and resolved.status == "resolved"
    assert resolved.id == opened.id and resolved.sequence == 1


def test_restart_during_spike_does_not_reopen() -> None:
    feed = Feed(AlertTracker(CFG))
    assert feed.step(50) is not None
    state = json.loads(json.dumps(feed.tracker.state()))
    restarted = Feed(AlertTracker.from_state(CFG, state), start=feed.t)
    assert restarted.step(52) is None


def test_sources_have_their_own_episodes() -> None:
    feed = Feed(AlertTracker(CFG))
    a = feed.step(50, source=None)
    feed.t -= MIN
    b = feed.step(50, source="reddit")
    assert a is not None and b is not None and a.id != b.id and b.source == "reddit"
    assert "reddit" in unquote(b.kibana_url or "")


def test_the_kibana_link_opens_the_shipped_mentions_data_view_by_default() -> None:
    cfg = LifecycleConfig(kibana_url="https://kibana.example.gov.au/")
    url = unquote(kibana_discover_url(cfg, "outage", None, datetime(2026, 1, 1, tzinfo=UTC),
                                      datetime(2026, 1, 1, 0, 5, tzinfo=UTC)) or "")
    shipped = Path(__file__).resolve().parents[3] / "deploy" / "kibana" / "earful.ndjson"
    views = {o["id"]: o["attributes"]["title"] for o in map(json.loads, shipped.read_text().splitlines())
             if o["type"] == "index-pattern"}
    assert f"index:'{cfg.kibana_data_view}'" in url
    assert views[cfg.kibana_data_view or ""] == "earful-mentions*"


def test_a_flagged_window_under_the_count_floor_is_not_calm() -> None:
    # The detector's half-hour and level tests can flag a steady run of small windows: that rise
    # stays one open alert, rather than resolving and coming back every few minutes.
    feed = Feed(AlertTracker(CFG))
    assert feed.step(30, expected=0.1) is not None
    events = [feed.tracker.step(
        topic="outage", source=None, window_start=feed.t + i * MIN, observed=4, expected=0.1, score=0.6,
        is_anomalous=True, severity="minor", samples=[], top_terms=[], now=feed.t + (i + 1) * MIN,
        calm_below=5.0) for i in range(30)]
    assert [e for e in events if e is not None] == []


def test_a_return_never_lowers_the_severity_subscribers_were_told() -> None:
    feed = Feed(AlertTracker(CFG))
    feed.step(80, severity="major")
    for _ in range(3):
        feed.step(5)
    back = feed.step(40, severity="minor")
    assert back is not None and back.status == "open" and back.severity == "major"


def test_the_calm_needed_after_returns_stops_doubling() -> None:
    # After the second return 12 calm windows (3 x 2 x 2) give the all clear, and after a third
    # still 12, not 24: ordinary chatter breaks a long run of calm now and then.
    feed = Feed(AlertTracker(CFG))
    needed = []
    feed.step(60)
    for _ in range(4):
        calm = 0
        while (alert := feed.step(5)) is None:
            calm += 1
        assert alert.status == "resolved"
        needed.append(calm + 1)
        assert feed.step(60) is not None  # back within the cooldown
    assert needed == [3, 6, 12, 12]

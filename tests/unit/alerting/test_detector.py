from __future__ import annotations

import json
import math
import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from streams.alerting.baseline import SURPRISE_LEVELS, RecentLevel, SurpriseHistory
from streams.alerting.detector import (
    STATE_VERSION,
    CalendarOverride,
    Detector,
    DetectorConfig,
    Observation,
    episode_starts,
    nb_log_sf,
)

START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
MINUTE = timedelta(minutes=1)


def poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: exact, and fast enough for the small rates used here.
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def daily_rate(ts: datetime) -> float:
    """Quiet at night, busiest at 14:00 (30/min at the peak, 3/min at 02:00)."""
    hour = ts.hour + ts.minute / 60
    return 16.5 + 13.5 * math.cos((hour - 14) / 24 * 2 * math.pi)


def daily_series(days: int, seed: int = 7) -> list[tuple[datetime, float]]:
    rng = random.Random(seed)
    rows = []
    for i in range(days * 24 * 60):
        ts = START + i * MINUTE
        rows.append((ts, float(poisson(rng, daily_rate(ts)))))
    return rows


def run(det: Detector, rows: list[tuple[datetime, float]]) -> list[Observation]:
    return [det.observe(ts, v) for ts, v in rows]


@pytest.fixture(scope="module")
def two_weeks() -> list[tuple[datetime, float]]:
    return daily_series(14)


def test_the_usual_daily_peak_raises_no_alert(two_weeks):
    obs = run(Detector(DetectorConfig()), two_weeks)
    after_first_week = [o for o in obs if o.ts >= START + timedelta(days=7)]
    peak = [o for o in after_first_week if 13 <= o.ts.hour < 15]
    assert peak and not any(o.is_anomalous for o in after_first_week)
    # The baseline learned the cycle: expected near 30/min at the peak, near 3/min at night.
    assert 24 < sum(o.expected for o in peak) / len(peak) < 35
    night = [o for o in after_first_week if o.ts.hour == 2]
    assert sum(o.expected for o in night) / len(night) < 8


def test_a_tenfold_burst_is_flagged_on_its_first_row(two_weeks):
    ts = START + timedelta(days=13, hours=10)
    det = Detector(DetectorConfig())
    run(det, [row for row in two_weeks if row[0] < ts])
    first = det.observe(ts, 10 * daily_rate(ts))
    assert first.is_anomalous
    assert first.severity in ("major", "critical")
    assert first.anomaly_score > 0.5


@pytest.mark.parametrize("count", [2, 4])
def test_a_few_mentions_after_silence_is_not_a_spike(count):
    rows = [(START + i * MINUTE, 0.0) for i in range(3 * 24 * 60)]
    det = Detector(DetectorConfig())
    run(det, rows)
    ts = rows[-1][0] + MINUTE
    obs = det.observe(ts, count)
    assert not obs.is_anomalous and obs.severity is None and obs.anomaly_score == 0
    # It is the floor that keeps it quiet: without one the same count is a detectable surprise.
    bare = Detector(DetectorConfig(min_count=0, threshold=0.2))
    run(bare, rows)
    assert bare.observe(ts, count).is_anomalous


def test_min_count_mentions_after_silence_can_be_a_spike():
    rows = [(START + i * MINUTE, 0.0) for i in range(3 * 24 * 60)]
    after = rows[-1][0] + MINUTE
    # One row of exactly min_count: its own test.
    det = Detector(DetectorConfig(min_count=5, window_minutes=0.0, shift_half_life_minutes=0.0))
    run(det, rows)
    obs = det.observe(after, 5)
    assert obs.is_anomalous and obs.anomaly_score > 0  # the floor itself is in
    # Two rows, 2 then 3: neither reaches the floor, their half-hour sum does, exactly.
    for floor, heard in ((5.0, True), (5.01, False)):
        det = Detector(DetectorConfig(min_count=floor, shift_half_life_minutes=0.0))
        run(det, rows)
        det.observe(after, 2)
        assert (det.observe(after + MINUTE, 3).anomaly_score > 0) is heard


def test_a_declared_busy_period_is_expected_not_alerted(two_weeks):
    deadline = START + timedelta(days=14, hours=12)
    busy = [(deadline + i * MINUTE, 4.0 * daily_rate(deadline + i * MINUTE)) for i in range(120)]
    override = CalendarOverride(deadline, deadline + timedelta(hours=2), 4.0, name="lodgement day")

    plain = Detector(DetectorConfig())
    run(plain, two_weeks)
    assert any(o.is_anomalous for o in run(plain, busy))

    warned = Detector(DetectorConfig(overrides=(override,)))
    run(warned, two_weeks)
    obs = run(warned, busy)
    assert not any(o.is_anomalous for o in obs)
    assert obs[0].expected > 3 * daily_rate(deadline)


def test_a_declared_busy_period_does_not_raise_the_next_days_baseline(two_weeks):
    # Four times the usual chatter, declared: the baseline learns the usual part only, so the
    # same hour next day expects what it would have without the busy period.
    deadline = START + timedelta(days=12, hours=12)
    override = CalendarOverride(deadline, deadline + timedelta(hours=2), 4.0, name="lodgement day")
    busy = [(ts, 4.0 * v) if deadline <= ts < deadline + timedelta(hours=2) else (ts, v) for ts, v in two_weeks]
    next_day = deadline + timedelta(days=1, minutes=30)

    warned = Detector(DetectorConfig(overrides=(override,)))
    run(warned, [row for row in busy if row[0] < next_day])
    usual = Detector(DetectorConfig())
    run(usual, [row for row in two_weeks if row[0] < next_day])
    expected = usual.observe(next_day, 30.0).expected
    assert warned.observe(next_day, 30.0).expected == pytest.approx(expected, rel=0.01)


def test_an_override_covers_its_start_and_stops_at_its_end():
    start, end = START + timedelta(days=3), START + timedelta(days=3, hours=2)
    det = Detector(DetectorConfig(overrides=(CalendarOverride(start, end, 4.0, name="deadline"),)))
    assert det.multiplier(start - MINUTE) == 1.0
    assert det.multiplier(start) == 4.0
    assert det.multiplier(end - MINUTE) == 4.0
    assert det.multiplier(end) == 1.0  # [start, end): the next period may start right here


def test_an_override_for_another_topic_does_not_apply(two_weeks):
    deadline = START + timedelta(days=14, hours=12)
    override = CalendarOverride(deadline, deadline + timedelta(hours=2), 4.0, topics=("refund",))
    cfg = DetectorConfig(overrides=(override,))
    det = Detector(cfg.for_topic("outage"))
    run(det, two_weeks)
    assert det.observe(deadline, 4.0 * daily_rate(deadline)).is_anomalous
    assert Detector(cfg.for_topic("refund")).multiplier(deadline) == 4.0


def test_state_round_trip_continues_identically(two_weeks):
    rows = two_weeks[: 3 * 24 * 60]
    rows.append((rows[-1][0] + MINUTE, 400.0))
    rows += [(rows[-1][0] + (i + 1) * MINUTE, v) for i, (_, v) in enumerate(two_weeks[:600])]
    cut = 2 * 24 * 60 + 17
    whole = run(Detector(DetectorConfig()), rows)

    first = Detector(DetectorConfig())
    run(first, rows[:cut])
    state = json.loads(json.dumps(first.state()))
    resumed = Detector.from_state(DetectorConfig(), state)
    assert run(resumed, rows[cut:]) == whole[cut:]
    assert any(o.is_anomalous for o in whole[cut:])


def test_scores_never_depend_on_later_rows(two_weeks):
    rows = two_weeks[: 2 * 24 * 60]
    rows[2000] = (rows[2000][0], 500.0)
    prefix = run(Detector(DetectorConfig()), rows[:2001])
    full = run(Detector(DetectorConfig()), rows)
    assert full[:2001] == prefix
    assert prefix[-1].is_anomalous


def test_severity_grows_with_the_spike(two_weeks):
    ts = START + timedelta(days=13, hours=14)
    det = Detector(DetectorConfig())
    run(det, [row for row in two_weeks if row[0] < ts])
    state = det.state()
    severities = []
    for factor in (3, 5, 20):
        probe = Detector.from_state(DetectorConfig(), state)
        severities.append(probe.observe(ts, factor * daily_rate(ts)).severity)
    assert severities == ["minor", "major", "critical"]


def with_daily_bursts(rows: list[tuple[datetime, float]], factor: float) -> list[tuple[datetime, float]]:
    """Every day at 11:00 and 16:00 the topic is in the news for ten minutes."""
    return [(ts, factor * v if ts.hour in (11, 16) and ts.minute < 10 else v) for ts, v in rows]


def test_a_burst_the_topic_has_every_day_scores_lower_than_a_first(two_weeks):
    bursty = with_daily_bursts(two_weeks, 3.0)
    ts = START + timedelta(days=13, hours=11)
    past = [row for row in bursty if row[0] < ts]
    scores = {}
    for name, series in (("bursty", past), ("calm", [row for row in two_weeks if row[0] < ts])):
        det = Detector(DetectorConfig())
        run(det, series)
        scores[name] = det.observe(ts, 3.0 * daily_rate(ts)).anomaly_score
    uncalibrated = Detector(DetectorConfig(calibration_half_life_minutes=0))
    run(uncalibrated, past)
    # The model alone alerts on the daily burst on either topic; the bursty topic's own
    # record says it is routine there.
    assert scores["calm"] > 0.5 and uncalibrated.observe(ts, 3.0 * daily_rate(ts)).anomaly_score > 0.5
    assert scores["bursty"] < 0.5 < scores["calm"]
    # A spike larger than any it has had still alerts on the bursty topic.
    det = Detector(DetectorConfig())
    run(det, past)
    assert det.observe(ts, 10.0 * daily_rate(ts)).is_anomalous


def test_a_repeat_of_an_earlier_spike_pages_only_where_the_topic_trusts_the_model():
    # A steady topic (20 a minute), and the same 3-minute spike of 150 a minute on day 3 and
    # day 5. The topic's own record remembers the first: by default the repeat counts as no
    # rarer than it has been, and stays under the threshold. deploy/earful.yaml turns the record
    # off for outage, where every repeat must page.
    import yaml

    from streams.settings import PROJECT_ROOT

    shipped = yaml.safe_load((PROJECT_ROOT / "deploy" / "earful.yaml").read_text())["alerting"]["detector"]
    rng = random.Random(3)
    spikes = {START + timedelta(days=d, hours=14, minutes=m) for d in (3, 5) for m in range(3)}
    rows = [(ts, 150.0 if ts in spikes else float(poisson(rng, 20.0)))
            for ts in (START + i * MINUTE for i in range(6 * 24 * 60))]
    alerted = {}
    for name, cfg in (("default", DetectorConfig()),
                      ("outage", DetectorConfig.from_dict(shipped).for_topic("outage"))):
        scored = {o.ts: o for o in run(Detector(cfg), rows)}
        alerted[name] = [any(scored[ts].is_anomalous for ts in sorted(spikes) if ts.day == START.day + d)
                         for d in (3, 5)]
    assert alerted == {"default": [True, False], "outage": [True, True]}


def test_calibration_never_makes_a_row_more_surprising(two_weeks):
    rows = with_daily_bursts(two_weeks[: 4 * 24 * 60], 2.5)
    plain = run(Detector(DetectorConfig(calibration_half_life_minutes=0)), rows)
    calibrated = run(Detector(DetectorConfig()), rows)
    assert all(c.anomaly_score <= p.anomaly_score + 1e-12 for c, p in zip(calibrated, plain, strict=True))
    assert any(c.anomaly_score < p.anomaly_score for c, p in zip(calibrated, plain, strict=True))


def test_surprise_history_counts_rows_at_or_above_each_level():
    history = SurpriseHistory(half_life_minutes=60.0, prior_rows=0.0)
    for s in (0.0, 1.0, 3.0, 3.0, 10.0):
        history.learn(s, minutes=0.0)  # no time passes: nothing decays
    assert history.rows == 5
    assert history.exceedances(SURPRISE_LEVELS[0]) == 4
    # Exact on the ladder's levels, in between off them.
    below_three = max(level for level in SURPRISE_LEVELS if level <= 3.0)
    above_three = min(level for level in SURPRISE_LEVELS if level > 3.0)
    assert history.exceedances(below_three) == pytest.approx(3) and history.exceedances(above_three) == pytest.approx(1)
    assert 1 < history.exceedances(3.0) < 3
    assert history.exceedances(100.0) == 0
    # 3 rows in 5 were at least this surprising, however unlikely the model says it is.
    assert history.calibrated(2.0) == pytest.approx(-math.log10(3 / 5))
    assert history.calibrated(20.0) == 20.0  # never seen: the model's word stands
    history.learn(0.0, minutes=60.0)  # an hour later, past rows count half
    assert history.rows == pytest.approx(3.5)
    restored = SurpriseHistory(60.0, 0.0, json.loads(json.dumps(history.state())))
    assert restored.exceedances(2.0) == history.exceedances(2.0)


def test_config_from_dict_with_overrides_and_topics():
    cfg = DetectorConfig.from_dict(
        {
            "timezone": "Australia/Sydney",
            "threshold": 0.6,
            "overrides": [
                {"start": "2025-10-31T00:00", "end": "2025-11-01T00:00", "multiplier": 3,
                 "topics": ["due_date"], "name": "individual returns due"}
            ],
            "topics": {"outage": {"threshold": 0.4, "min_count": 3}},
        }
    )
    assert cfg.for_topic("outage").threshold == 0.4
    assert cfg.for_topic("outage").min_count == 3
    assert cfg.for_topic("refund").threshold == 0.6
    # Naive override times are the agency's local time: midnight in Sydney is 13:00 UTC.
    det = Detector(cfg.for_topic("due_date"))
    assert det.multiplier(datetime(2025, 10, 30, 13, 0, tzinfo=UTC)) == 3
    assert det.multiplier(datetime(2025, 10, 30, 12, 59, tzinfo=UTC)) == 1
    with pytest.raises(ValueError, match="unknown detector settings"):
        DetectorConfig.from_dict({"treshold": 0.5})


@pytest.mark.parametrize(
    ("own", "says"),
    [
        ({"treshold": 0.4}, "unknown detector settings for topic 'outage': treshold"),
        ({"threshold": 5}, "detector settings for topic 'outage': threshold must be in"),
        ({"min_count": "many"}, "detector settings for topic 'outage': min_count must be a number, got 'many'"),
        ({"reopen_after": 2.5}, "reopen_after must be a whole number"),
        ({"severity_ratios": [2, 4]}, "severity_ratios must be three numbers"),
        ({"overrides": []}, "overrides cannot be set per topic"),
        ({"timezone": "Mars/Olympus"}, "detector settings for topic 'outage'"),
    ],
)
def test_a_topics_bad_settings_are_refused_when_the_config_loads(own, says):
    # Not when the topic's first window closes, inside the worker, where it would stop every
    # window of the partition from closing.
    with pytest.raises(ValueError, match=re.escape(says)):
        DetectorConfig.from_dict({"topics": {"outage": own, "refund": {"threshold": 0.4}}})


def test_settings_given_as_text_are_numbers_once_loaded():
    cfg = DetectorConfig.from_dict({"threshold": "0.4", "warmup_minutes": 0.25,
                                    "topics": {"outage": {"min_count": "3", "reopen_after": 6.0}}})
    assert cfg.threshold == 0.4
    assert cfg.warmup_minutes == 0.25  # a fraction, though the default (24 * 60) is a whole number
    outage = cfg.for_topic("outage")
    assert outage.min_count == 3.0 and isinstance(outage.reopen_after, int) and outage.reopen_after == 6
    Detector(outage).observe(datetime(2025, 1, 1, tzinfo=UTC), 4)  # scores without a TypeError


def test_an_alert_reopens_only_after_enough_quiet_rows():
    flags = [0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    rows = [i for i, flag in enumerate(flags) if flag]
    assert episode_starts(rows, 2) == [1, 7, 11]
    assert episode_starts(rows, 0) == [1, 2, 4, 7, 11]
    assert episode_starts(rows, 3) == [1, 11]


@pytest.mark.parametrize(("k", "mean", "dispersion"), [(1, 0.5, 0.1), (5, 2, 0.05), (30, 10, 0.1), (150, 100, 0.02)])
def test_negative_binomial_tail_matches_the_sum_of_its_pmf(k, mean, dispersion):
    r = 1 / dispersion
    p = r / (r + mean)
    below = sum(
        math.exp(math.lgamma(x + r) - math.lgamma(r) - math.lgamma(x + 1) + r * math.log(p) + x * math.log1p(-p))
        for x in range(k)
    )
    assert nb_log_sf(k, mean, dispersion) == pytest.approx(math.log(1 - below), rel=1e-9)


def test_a_rise_that_lasts_hours_is_judged_on_its_level_too(two_weeks):
    # On a topic with daily bursts single rows are tempered by its record; a doubling
    # that lasts four hours still stands out in the level over the last hours.
    bursty = with_daily_bursts(two_weeks, 3.0)
    start = START + timedelta(days=13, hours=6)
    rng = random.Random(3)
    rows = [
        (ts, float(poisson(rng, 2.0 * daily_rate(ts)))) if start <= ts < start + timedelta(hours=4) else (ts, v)
        for ts, v in bursty
    ]

    def peak(shift: float) -> float:
        obs = run(Detector(DetectorConfig(shift_half_life_minutes=shift)), rows)
        return max(o.anomaly_score for o in obs if start <= o.ts < start + timedelta(hours=4))

    assert peak(180.0) > peak(0.0) + 0.05


def test_a_rise_over_half_an_hour_is_judged_on_its_sum_too(two_weeks):
    # Two and a half times the usual chatter for 30 minutes: each minute is only somewhat
    # high, but their sum over the window is far past what half an hour usually holds.
    start = START + timedelta(days=13, hours=10)
    rng = random.Random(3)
    rows = [
        (ts, float(poisson(rng, 2.5 * daily_rate(ts)))) if start <= ts < start + timedelta(minutes=30) else (ts, v)
        for ts, v in two_weeks
    ]

    def inside(window: float) -> list[Observation]:
        obs = run(Detector(DetectorConfig(window_minutes=window, shift_half_life_minutes=0.0)), rows)
        return [o for o in obs if start <= o.ts < start + timedelta(minutes=30)]

    with_sum, rows_only = inside(30.0), inside(0.0)
    assert max(o.anomaly_score for o in with_sum) > max(o.anomaly_score for o in rows_only) + 0.05
    assert sum(o.is_anomalous for o in with_sum) > sum(o.is_anomalous for o in rows_only)


def test_recent_level_averages_over_its_effective_rows():
    level = RecentLevel(60.0, 600.0)
    for _ in range(2000):
        total, expected = level.add(10.0, 8.0, 1.0)
    assert level.rows == pytest.approx(2 * 60 / math.log(2), rel=0.02)
    assert total == pytest.approx(10.0 * level.rows)
    assert expected == pytest.approx(8.0 * level.rows)
    restored = RecentLevel(60.0, 600.0, json.loads(json.dumps(level.state())))
    assert restored.add(20.0, 8.0, 1.0) == level.add(20.0, 8.0, 1.0)


def test_a_version_1_state_resumes_with_the_level_test_starting_from_the_rows_record(two_weeks):
    det = Detector(DetectorConfig())
    run(det, two_weeks[: 3 * 24 * 60])
    old = {k: v for k, v in det.state().items() if k not in ("shift", "shift_surprises")}
    old["version"] = 1
    resumed = Detector.from_state(DetectorConfig(), json.loads(json.dumps(old)))
    assert resumed.shift_surprises.state() == det.surprises.state()
    resumed.observe(two_weeks[3 * 24 * 60][0], two_weeks[3 * 24 * 60][1])
    assert resumed.state()["version"] == STATE_VERSION == 2
    with pytest.raises(ValueError, match="version"):
        Detector.from_state(DetectorConfig(), {**old, "version": 99})


@pytest.mark.parametrize("multiplier", [0, -2, "nan"])
def test_an_override_multiplier_must_be_above_zero_at_load(multiplier):
    override = {"start": "2025-10-31T00:00", "end": "2025-11-01T00:00", "multiplier": multiplier,
                "name": "individual returns due"}
    with pytest.raises(ValueError, match="calendar override 'individual returns due': multiplier must be"):
        DetectorConfig.from_dict({"overrides": [override]})


def test_an_override_without_a_name_is_named_by_its_period():
    override = {"start": "2025-10-31T00:00", "end": "2025-11-01T00:00", "multiplier": "lots"}
    with pytest.raises(ValueError, match="calendar override from 2025-10-31T00:00 to 2025-11-01T00:00"):
        DetectorConfig.from_dict({"overrides": [override]})


def test_a_score_equal_to_the_threshold_is_anomalous(two_weeks):
    # The threshold is "the score a row needs": a row scoring exactly that is a spike,
    # and a threshold one step above its score is not met.
    ts = START + timedelta(days=13, hours=10)
    warm = [row for row in two_weeks if row[0] < ts]
    det = Detector(DetectorConfig())
    run(det, warm)
    state = det.state()
    score = Detector.from_state(DetectorConfig(), state).observe(ts, 3 * daily_rate(ts)).anomaly_score
    assert 0 < score < 1
    at = Detector.from_state(DetectorConfig(threshold=score), state).observe(ts, 3 * daily_rate(ts))
    above = DetectorConfig(threshold=math.nextafter(score, 1.0))
    over = Detector.from_state(above, state).observe(ts, 3 * daily_rate(ts))
    assert at.anomaly_score == over.anomaly_score == score
    assert at.is_anomalous and at.severity is not None
    assert not over.is_anomalous and over.severity is None

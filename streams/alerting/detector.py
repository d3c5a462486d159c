"""Is this row's count a spike for its topic? Pure code shared by the stream and ``earful detect``.

    det = Detector(cfg.for_topic("outage"))          # or Detector.from_state(cfg, state)
    obs = det.observe(ts, count)                      # one row at a time, no look-ahead
    obs.expected, obs.anomaly_score, obs.is_anomalous, obs.severity
    det.state()                                       # JSON-serialisable, for the table changelog

Each row is scored against a seasonal baseline (``baseline.py``) with a
negative-binomial upper tail: a Poisson tail is far too confident once chatter
is bursty, while the learned dispersion keeps a busy topic's normal wobble
quiet. That tail is then weighed against the topic's own record (``SurpriseHistory``):
on a topic whose chatter comes in news-driven bursts a "one in a million" row is a
daily event, so it counts only as rare as such rows have recently been there. One
threshold then fits a topic with hundreds of mentions per window and one with two.
Besides single rows and the sum of the last half hour, the average over the last few
hours is tested (``RecentLevel``), so a rise that lasts all afternoon is caught even
when no single row stands out; it has its own record to be judged against.
A count floor keeps "2 mentions instead of 0" from paging anyone, and
calendar overrides raise the expectation over known busy periods (lodgement
deadlines, campaigns) so they are expected rather than alerted on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime
from typing import Any, get_type_hints
from zoneinfo import ZoneInfo

from streams.alerting.baseline import (
    BaselineRates,
    RecentLevel,
    RecentWindow,
    SeasonalBaseline,
    SurpriseHistory,
)

SEVERITIES = ("info", "minor", "major", "critical")
STATE_VERSION = 2
# Versions from_state still reads: version 1 lacks the level-shift test, which starts afresh.
READABLE_STATE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class CalendarOverride:
    """A known busy period: expect ``multiplier`` times the usual level in [start, end)."""

    start: datetime
    end: datetime
    multiplier: float
    topics: tuple[str, ...] | None = None  # None: every topic
    name: str = ""

    def __post_init__(self) -> None:
        # The detector divides by the multiplier: 0 would crash it on the first row in the
        # period, and a negative one would expect negative chatter.
        if not (math.isfinite(self.multiplier) and self.multiplier > 0):
            raise ValueError(
                f"calendar override {self.label}: multiplier must be a number above 0 "
                f"(2 expects twice the usual chatter), got {self.multiplier!r}"
            )

    @property
    def label(self) -> str:
        """How error messages name this override: its name, else its period."""
        if self.name:
            return repr(self.name)
        return f"from {self.start.isoformat()} to {self.end.isoformat()}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalendarOverride:
        topics = d.get("topics")
        return cls(
            start=_as_datetime(d["start"]),
            end=_as_datetime(d["end"]),
            multiplier=_multiplier(d),
            topics=tuple(topics) if topics else None,
            name=str(d.get("name", "")),
        )

    def applies(self, ts: datetime, topic: str | None) -> bool:
        if self.topics is not None and topic not in self.topics:
            return False
        return self.start <= ts < self.end


@dataclass(frozen=True)
class DetectorConfig:
    """Spike detection settings for one series; ``for_topic`` applies per-topic sensitivity.

    Built from the per-topic YAML mapping with ``from_dict`` (unknown keys are an
    error). Rates are half-lives in time, so the same settings hold for per-minute
    counts and for 5-minute backtests. The level half-life, clip, window and
    calibration defaults were chosen with ``earful eval-detector`` on NAB tuning
    series only.
    """

    # Local time of the agency's citizens: "lunchtime" and "Monday" are theirs.
    timezone: str = "UTC"
    # anomaly_score a row needs to be anomalous; lower is more sensitive.
    threshold: float = 0.5
    # -log10(tail probability) that maps to anomaly_score 0.5.
    score_scale: float = 6.0
    # A count below this is never a spike, however quiet the topic usually is. Each test has
    # its own count: one window's, the sum of the last window_minutes, the recent level's.
    # A window of 2 is no spike at min_count 5; three in a row (a sum of 6) can be.
    min_count: float = 5.0
    # How fast the baseline follows drifts: overall level, each hour's factor (in days
    # of that hour seen), each weekday's factor, and the burstiness (dispersion).
    level_half_life_minutes: float = 24 * 60
    daily_half_life_days: float = 2.0
    weekly_half_life_weeks: float = 4.0
    dispersion_half_life_minutes: float = 3 * 24 * 60
    # Even a calm topic is burstier than Poisson: people reply to each other.
    min_dispersion: float = 0.02
    # The baseline learns from at most this many standard deviations above expected,
    # so a spike does not teach the baseline that spikes are normal.
    clip_sigmas: float = 2.0
    # Also test the sum over this many minutes, for rises that build over several rows
    # (0: single rows only).
    window_minutes: float = 30.0
    # Also test the average over about this half-life, for rises that last hours: chatter
    # that triples for an afternoon without one remarkable half hour (0: off). It is judged
    # against its own record, as the single rows are against theirs.
    shift_half_life_minutes: float = 180.0
    # Judge each row's surprise against how often this topic's own rows were that
    # surprising, over this half-life (0: trust the model's tail alone).
    calibration_half_life_minutes: float = 7 * 24 * 60
    # The series' own tail starts from this many rows that behave as the model says.
    calibration_prior_rows: float = 100.0
    # No alerts until the baseline has seen this much history.
    warmup_minutes: float = 24 * 60
    # An alert episode reopens only after this many quiet rows (``earful detect`` and
    # the backtest; in the stream the alert lifecycle owns episodes).
    reopen_after: int = 12
    # value/expected ratios for minor, major, critical (below the first: info).
    severity_ratios: tuple[float, float, float] = (2.0, 4.0, 10.0)
    # -log10(tail probability) for minor, major, critical.
    severity_surprise: tuple[float, float, float] = (8.0, 12.0, 20.0)
    overrides: tuple[CalendarOverride, ...] = ()
    # Per-topic settings (threshold, min_count, ...) applied by for_topic().
    topics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    topic: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.min_dispersion <= 0:
            raise ValueError("min_dispersion must be positive")
        if self.reopen_after < 0:
            raise ValueError("reopen_after must be >= 0")
        ZoneInfo(self.timezone)  # fail at load time, not on the first row

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DetectorConfig:
        """From a YAML mapping; unknown keys are an error so a typo cannot silently do nothing."""
        d = _typed(dict(d or {}), "detector settings")
        zone = ZoneInfo(str(d.get("timezone", "UTC")))
        if "overrides" in d:
            d["overrides"] = tuple(
                _localise(CalendarOverride.from_dict(o), zone) for o in d["overrides"] or ()
            )
        topics = {str(k): dict(v or {}) for k, v in (d.pop("topics", None) or {}).items()}
        for topic, own in topics.items():
            misplaced = {"topics", "topic", "overrides"} & set(own)
            if misplaced:
                raise ValueError(
                    f"detector settings for topic {topic!r}: {', '.join(sorted(misplaced))} cannot be set per "
                    "topic (a calendar override names its topics in detector.overrides)"
                )
            topics[topic] = _typed(own, f"detector settings for topic {topic!r}")
        cfg = cls(**d, topics=topics)
        # Each topic's settings are checked now, at start, not when its first window closes.
        for topic in topics:
            try:
                cfg.for_topic(topic)
            except (TypeError, ValueError, KeyError) as exc:  # KeyError: an unknown time zone
                raise ValueError(f"detector settings for topic {topic!r}: {exc}") from None
        return cfg

    def for_topic(self, topic: str) -> DetectorConfig:
        """This config with the topic's own sensitivity, and only the overrides meant for it."""
        own = dict(self.topics.get(topic, {}))
        for key in ("topics", "topic", "overrides"):
            own.pop(key, None)
        return replace(self, topic=topic, **own)


@dataclass(frozen=True)
class Observation:
    ts: datetime
    value: float
    expected: float
    anomaly_score: float
    is_anomalous: bool
    severity: str | None


class Detector:
    """Online spike detector for one count series at a fixed resolution."""

    def __init__(self, cfg: DetectorConfig, _state: Mapping[str, Any] | None = None):
        self.cfg = cfg
        self.zone = ZoneInfo(cfg.timezone)
        self._overrides = tuple(_localise(o, self.zone) for o in cfg.overrides)
        rates = BaselineRates(
            level_half_life_minutes=cfg.level_half_life_minutes,
            daily_half_life_days=cfg.daily_half_life_days,
            weekly_half_life_weeks=cfg.weekly_half_life_weeks,
            dispersion_half_life_minutes=cfg.dispersion_half_life_minutes,
        )
        baseline_state = dict(_state["baseline"]) if _state else None
        self.baseline = SeasonalBaseline(rates, self.zone, baseline_state)
        window_state = dict(_state["window"]) if _state and "window" in _state else None
        self.window = RecentWindow(cfg.window_minutes, cfg.dispersion_half_life_minutes, window_state)
        history_state = dict(_state["surprises"]) if _state and "surprises" in _state else None
        self.surprises = SurpriseHistory(
            cfg.calibration_half_life_minutes, cfg.calibration_prior_rows, history_state
        )
        shift_state = dict(_state["shift"]) if _state and "shift" in _state else None
        self.shift = RecentLevel(cfg.shift_half_life_minutes, cfg.dispersion_half_life_minutes, shift_state)
        # A version-1 state has no record for the level test yet: it starts from the single
        # rows' record rather than from none, which would trust the model's tail and page.
        shift_history = dict(_state.get("shift_surprises") or _state.get("surprises") or {}) if _state else None
        self.shift_surprises = SurpriseHistory(
            cfg.calibration_half_life_minutes, cfg.calibration_prior_rows, shift_history
        )

    @classmethod
    def from_state(cls, cfg: DetectorConfig, state: Mapping[str, Any]) -> Detector:
        if state.get("version") not in READABLE_STATE_VERSIONS:
            raise ValueError(f"unknown detector state version {state.get('version')!r}")
        return cls(cfg, state)

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "baseline": self.baseline.state(),
            "window": self.window.state(),
            "surprises": self.surprises.state(),
            "shift": self.shift.state(),
            "shift_surprises": self.shift_surprises.state(),
        }

    def multiplier(self, ts: datetime) -> float:
        """Product of the calendar overrides in force at ``ts`` for this topic."""
        m = 1.0
        for o in self._overrides:
            if o.applies(ts, self.cfg.topic):
                m *= o.multiplier
        return m

    def observe(self, ts: datetime, value: float) -> Observation:
        cfg = self.cfg
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
        value = float(value)
        usual = self.baseline.expected(ts)
        multiplier = self.multiplier(ts)
        expected = usual * multiplier
        dispersion = max(self.baseline.dispersion, cfg.min_dispersion)

        warmed_up = self.baseline.minutes_seen(ts) >= cfg.warmup_minutes
        minutes = self.baseline.minutes_since_last(ts)
        surprise, ratio = 0.0, value / expected
        if warmed_up and value >= cfg.min_count and value > expected:
            surprise = -nb_log_sf(value, expected, dispersion) / math.log(10)

        # The same test on the sum of the last few minutes (the current row included).
        total, total_expected, rows = self.window.add(ts, value, expected)
        window_dispersion = max(self.window.dispersion(dispersion), cfg.min_dispersion / max(rows, 1))
        if warmed_up and rows > 1 and total >= cfg.min_count and total > total_expected and value > expected:
            s = -nb_log_sf(total, total_expected, window_dispersion) / math.log(10)
            if s > surprise:
                surprise, ratio = s, total / total_expected

        # How surprising for this series: the model's surprise, tempered by its own record.
        model_surprise, surprise = surprise, self.surprises.calibrated(surprise)

        # The level over the last hours, judged against how often it has been this far up.
        shift_surprise = 0.0
        if cfg.shift_half_life_minutes > 0:
            shift_total, shift_expected = self.shift.add(value, expected, minutes)
            shift_dispersion = max(self.shift.dispersion(dispersion), cfg.min_dispersion / self.shift.rows)
            if warmed_up and shift_total >= cfg.min_count and shift_total > shift_expected and value > expected:
                shift_surprise = -nb_log_sf(shift_total, shift_expected, shift_dispersion) / math.log(10)
            calibrated_shift = self.shift_surprises.calibrated(shift_surprise)
            if calibrated_shift > surprise:
                surprise, ratio = calibrated_shift, shift_total / shift_expected
        score = surprise / (surprise + cfg.score_scale) if surprise > 0 else 0.0
        anomalous = score >= cfg.threshold
        severity = self._severity(ratio, surprise) if anomalous else None

        # Learn the usual level: undo the override, and clip so a spike is not learned as normal.
        plain = value / multiplier
        ceiling = usual + cfg.clip_sigmas * math.sqrt(usual + dispersion * usual * usual)
        if self.baseline.level is not None:
            plain = min(plain, ceiling)
        self.baseline.update(ts, plain)
        if warmed_up and minutes > 0:
            self.surprises.learn(model_surprise, minutes)
        if rows > 1 and minutes > 0:
            spread = math.sqrt(total_expected + window_dispersion * total_expected**2)
            self.window.learn(min(total, total_expected + cfg.clip_sigmas * spread), total_expected, minutes)
        if cfg.shift_half_life_minutes > 0 and minutes > 0:
            if warmed_up:
                self.shift_surprises.learn(shift_surprise, minutes)
            spread = math.sqrt(shift_expected + shift_dispersion * shift_expected**2)
            self.shift.learn(min(shift_total, shift_expected + cfg.clip_sigmas * spread), shift_expected, minutes)
        return Observation(ts, value, expected, score, anomalous, severity)

    def _severity(self, ratio: float, surprise: float) -> str:
        # The lower of "how large" and "how improbable": a 12x on a topic that usually
        # gets one mention an hour is not critical, and neither is a wildly improbable +20%.
        by_ratio = sum(ratio >= r for r in self.cfg.severity_ratios)
        by_surprise = sum(surprise >= s for s in self.cfg.severity_surprise)
        return SEVERITIES[min(by_ratio, by_surprise)]


def episode_starts(anomalous_rows: Iterable[int], reopen_after: int) -> list[int]:
    """Rows where an alert would open, given the (ascending) indices of anomalous rows.

    An alert opens on an anomalous row preceded by at least ``reopen_after`` quiet rows
    (the start of the series counts as quiet). Taking indices rather than one flag per
    row keeps a threshold sweep over a long backtest cheap.
    """
    starts: list[int] = []
    previous: int | None = None
    for row in anomalous_rows:
        if previous is None or row - previous - 1 >= reopen_after:
            starts.append(row)
        previous = row
    return starts


# -- the negative-binomial tail ----------------------------------------------


def nb_log_sf(k: float, mean: float, dispersion: float) -> float:
    """ln P(X >= k) for X negative binomial with this mean and variance mean + dispersion*mean^2.

    P(X >= k) is the regularised incomplete beta I_x(k, r) with r = 1/dispersion and
    x = mean/(mean + r); computed in log space so tiny tails stay comparable.
    """
    if k <= 0:
        return 0.0
    r = 1.0 / dispersion
    x = mean / (mean + r)
    return _log_betainc(k, r, x)


_TINY = 1e-300


def _log_betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return -math.inf
    if x >= 1.0:
        return 0.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return log_front + math.log(_betacf(a, b, x)) - math.log(a)
    rest = math.exp(log_front) * _betacf(b, a, 1.0 - x) / b
    return math.log1p(-min(rest, 1.0 - 1e-16))


def _betacf(a: float, b: float, x: float, max_iter: int = 5000, eps: float = 1e-12) -> float:
    # Lentz's continued fraction for the incomplete beta function.
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


# -- config parsing helpers -----------------------------------------------------


def _typed(d: dict[str, Any], what: str) -> dict[str, Any]:
    """Settings as the dataclass types them: unknown names and values that are not numbers are
    errors here, rather than a TypeError on the first row scored."""
    types = get_type_hints(DetectorConfig)
    unknown = set(d) - {f.name for f in fields(DetectorConfig)}
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(sorted(unknown))}")
    out = dict(d)
    for name, value in d.items():
        kind = types[name]
        if name in ("severity_ratios", "severity_surprise"):
            out[name] = _numbers(value, what, name)
        elif kind is float:
            out[name] = _number(value, what, name)
        elif kind is int:
            number = _number(value, what, name)
            if number != int(number):
                raise ValueError(f"{what}: {name} must be a whole number, got {value!r}")
            out[name] = int(number)
        elif kind is str:
            out[name] = str(value)
    return out


def _number(value: Any, what: str, name: str) -> float:
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
        else:
            if math.isfinite(number):
                return number
    raise ValueError(f"{what}: {name} must be a number, got {value!r}")


def _numbers(value: Any, what: str, name: str) -> tuple[float, float, float]:
    if isinstance(value, list | tuple) and len(value) == 3:
        minor, major, critical = (_number(v, what, name) for v in value)
        return minor, major, critical
    raise ValueError(f"{what}: {name} must be three numbers (minor, major, critical), got {value!r}")


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):  # YAML reads a bare 2025-10-31 as a date
        return datetime(value.year, value.month, value.day)
    return datetime.fromisoformat(str(value))


def _multiplier(d: Mapping[str, Any]) -> float:
    label = repr(d["name"]) if d.get("name") else f"from {d.get('start')} to {d.get('end')}"
    if "multiplier" not in d:
        raise ValueError(f"calendar override {label}: multiplier is missing")
    try:
        return float(d["multiplier"])
    except (TypeError, ValueError):
        raise ValueError(
            f"calendar override {label}: multiplier must be a number above 0, got {d['multiplier']!r}"
        ) from None


def _localise(o: CalendarOverride, zone: ZoneInfo) -> CalendarOverride:
    # A naive time in config is the agency's local time ("31 October 23:59"), not UTC.
    start = o.start if o.start.tzinfo else o.start.replace(tzinfo=zone)
    end = o.end if o.end.tzinfo else o.end.replace(tzinfo=zone)
    return replace(o, start=start, end=end)


def score_series(rows: Sequence[tuple[datetime, float]], cfg: DetectorConfig) -> list[Observation]:
    """Score a whole series in order (a backtest), with a fresh detector."""
    det = Detector(cfg)
    return [det.observe(ts, v) for ts, v in rows]

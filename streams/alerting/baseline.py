"""What a topic's count usually is at this time of day and day of week, learned online.

A multiplicative Holt-Winters model: ``expected = level * hour_of_day * day_of_week``.
The level follows slow drifts in how much a topic is talked about; the two
seasonal profiles (24 hourly factors, interpolated between hour centres, and 7
daily factors, each averaging 1) carry the daily and weekly rhythm of citizens.
The burstiness around that expectation is tracked as a negative-binomial
dispersion ``alpha`` (variance = mean + alpha * mean^2).

Rates are given as half-lives in time, not in rows, so the same settings work
for per-minute counts in the stream and 5-minute counts in a backtest. The
whole state is a small dict of floats so it can live in a Faust table
changelog and survive a worker restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

HOURS = 24
DAYS = 7
# Counts are never expected to be exactly zero: a topic that has been quiet for
# days still gets the odd mention, and a zero mean makes every mention "infinitely" surprising.
MIN_EXPECTED = 0.05


def decay(minutes: float, half_life_minutes: float) -> float:
    """Weight of a new observation in an exponential average with this half-life."""
    if half_life_minutes <= 0:
        return 1.0
    return 1.0 - 0.5 ** (max(minutes, 0.0) / half_life_minutes)


@dataclass(frozen=True)
class BaselineRates:
    level_half_life_minutes: float = 12 * 60
    # A half-life in days of that hour's own observations: each hourly factor only
    # learns during (about) its hour, so it is measured in "hours of that hour seen".
    daily_half_life_days: float = 7.0
    weekly_half_life_weeks: float = 4.0
    dispersion_half_life_minutes: float = 3 * 24 * 60
    initial_dispersion: float = 0.1


class SeasonalBaseline:
    """Online expectation of the next count, with no look-ahead."""

    def __init__(self, rates: BaselineRates, zone: ZoneInfo, state: dict[str, Any] | None = None):
        self.rates = rates
        self.zone = zone
        state = state or {}
        self.level: float | None = state.get("level")
        self.hourly: list[float] = list(state.get("hourly") or [1.0] * HOURS)
        self.weekly: list[float] = list(state.get("weekly") or [1.0] * DAYS)
        # Dispersion as a ratio of two averages, E[(x-m)^2 - x] / E[m^2]: far steadier on
        # low counts than averaging the per-row ratio, which one stray mention can swing.
        self.excess_var: float = float(state.get("excess_var", 0.0))
        self.mean_sq: float = float(state.get("mean_sq", 0.0))
        self.last_ts: float | None = state.get("last_ts")
        self.first_ts: float | None = state.get("first_ts")

    def state(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "hourly": list(self.hourly),
            "weekly": list(self.weekly),
            "excess_var": self.excess_var,
            "mean_sq": self.mean_sq,
            "last_ts": self.last_ts,
            "first_ts": self.first_ts,
        }

    def _position(self, ts: datetime) -> tuple[int, int, float, int]:
        local = ts.astimezone(self.zone)
        # Factors sit at hour centres; interpolating avoids a step every hour on the hour.
        pos = local.hour + local.minute / 60.0 + local.second / 3600.0 - 0.5
        base = math.floor(pos)
        return base % HOURS, (base + 1) % HOURS, pos - base, local.weekday()

    def expected(self, ts: datetime) -> float:
        """The usual count for a row at ``ts`` (before any calendar override)."""
        if self.level is None:
            return MIN_EXPECTED
        h0, h1, w, day = self._position(ts)
        hour = (1.0 - w) * self.hourly[h0] + w * self.hourly[h1]
        return max(self.level * hour * self.weekly[day], MIN_EXPECTED)

    @property
    def dispersion(self) -> float:
        if self.mean_sq <= 0:
            return self.rates.initial_dispersion
        return max(self.excess_var / self.mean_sq, 0.0)

    def minutes_since_last(self, ts: datetime) -> float:
        if self.last_ts is None:
            return 0.0
        return (ts.timestamp() - self.last_ts) / 60.0

    def minutes_seen(self, ts: datetime) -> float:
        if self.first_ts is None:
            return 0.0
        return (ts.timestamp() - self.first_ts) / 60.0

    def update(self, ts: datetime, value: float) -> None:
        """Learn from one row. ``value`` is already clipped and de-seasonalised for overrides."""
        now = ts.timestamp()
        if self.level is None:
            self.level = max(float(value), MIN_EXPECTED)
            self.first_ts = self.last_ts = now
            return
        minutes = (now - self.last_ts) / 60.0 if self.last_ts is not None else 0.0
        self.last_ts = now
        if minutes <= 0:
            return
        rates = self.rates
        h0, h1, w, day = self._position(ts)
        hour = (1.0 - w) * self.hourly[h0] + w * self.hourly[h1]
        week = self.weekly[day]
        mean = max(self.level * hour * week, MIN_EXPECTED)

        # Dispersion first, against the expectation the row was scored with.
        a_disp = decay(minutes, rates.dispersion_half_life_minutes)
        self.excess_var += a_disp * ((value - mean) ** 2 - value - self.excess_var)
        self.mean_sq += a_disp * (mean * mean - self.mean_sq)

        a_level = decay(minutes, rates.level_half_life_minutes)
        self.level = max(
            self.level + a_level * (value / max(hour * week, 1e-6) - self.level), MIN_EXPECTED / 10
        )

        a_hour = decay(minutes, rates.daily_half_life_days * 60.0)
        error = value / max(self.level * week, 1e-9) - hour
        self.hourly[h0] = max(self.hourly[h0] + a_hour * (1.0 - w) * error, 0.01)
        self.hourly[h1] = max(self.hourly[h1] + a_hour * w * error, 0.01)
        _normalise(self.hourly)

        a_week = decay(minutes, rates.weekly_half_life_weeks * 24 * 60.0)
        error = value / max(self.level * hour, 1e-9) - week
        self.weekly[day] = max(self.weekly[day] + a_week * error, 0.01)
        _normalise(self.weekly)


def _normalise(factors: list[float]) -> None:
    # Factors average 1 so that the level alone carries "how busy is this topic".
    mean = sum(factors) / len(factors)
    for i, f in enumerate(factors):
        factors[i] = f / mean


class _LearnedDispersion:
    """Negative-binomial dispersion of a sum of rows, learned online from how far the sums
    strayed from their expectation (method of moments, exponentially weighted)."""

    excess_var: float
    mean_sq: float
    #: half-life of the learning, in minutes
    dispersion_half_life_minutes: float

    def dispersion(self, fallback: float) -> float:
        if self.mean_sq <= 0:
            return fallback
        return max(self.excess_var / self.mean_sq, 0.0)

    def learn(self, total: float, expected: float, minutes: float) -> None:
        a = decay(minutes, self.dispersion_half_life_minutes)
        self.excess_var += a * ((total - expected) ** 2 - total - self.excess_var)
        self.mean_sq += a * (expected * expected - self.mean_sq)


class RecentWindow(_LearnedDispersion):
    """Counts and expectations over the last few minutes, for spikes that build over rows.

    A portal outage often shows as a sustained 3x rather than one huge minute; each
    minute alone stays inside the usual burstiness, their sum does not. Sums of
    overlapping rows are burstier than independent rows would be, so the sum gets
    its own learned dispersion.
    """

    def __init__(self, minutes: float, half_life_minutes: float, state: dict[str, Any] | None = None):
        self.minutes = minutes
        self.half_life_minutes = self.dispersion_half_life_minutes = half_life_minutes
        state = state or {}
        # (epoch seconds, value, expected) rows inside the window, oldest first.
        self.rows: list[list[float]] = [list(r) for r in state.get("rows", [])]
        self.excess_var: float = float(state.get("excess_var", 0.0))
        self.mean_sq: float = float(state.get("mean_sq", 0.0))

    def state(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows], "excess_var": self.excess_var, "mean_sq": self.mean_sq}

    def add(self, ts: datetime, value: float, expected: float) -> tuple[float, float, int]:
        """Add this row; return (sum of values, sum of expected, rows) over the window."""
        now = ts.timestamp()
        self.rows.append([now, value, expected])
        horizon = now - self.minutes * 60.0
        while self.rows and self.rows[0][0] <= horizon:
            self.rows.pop(0)
        return sum(r[1] for r in self.rows), sum(r[2] for r in self.rows), len(self.rows)


# Surprise levels (-log10 tail probability) at which SurpriseHistory counts exceedances:
# 0.5 to 50,000 in steps of 10^(1/8), fine enough to interpolate between.
SURPRISE_LEVELS: tuple[float, ...] = tuple(0.5 * 10 ** (j / 8) for j in range(41))


class SurpriseHistory:
    """How often this series' rows have been at least this surprising, recently.

    The negative-binomial tail is only as honest as its model: a topic whose chatter
    comes in news-driven bursts produces "one in a billion" rows every day, while a
    quiet topic's rows are about as rare as the model says. Keeping a decayed count of
    past rows above each of a fixed ladder of surprise levels gives each series its
    own empirical tail, so one threshold means "this rare for this topic" on a busy
    topic and a quiet one alike.

    The estimate starts from ``prior_rows`` rows that behave as the model says, so a
    short history neither invents surprises nor hides them; it only ever makes a row
    less surprising than the model, never more (a quiet topic stays quiet).
    """

    def __init__(self, half_life_minutes: float, prior_rows: float, state: dict[str, Any] | None = None):
        self.half_life_minutes = half_life_minutes
        self.prior_rows = prior_rows
        state = state or {}
        self.rows: float = float(state.get("rows", 0.0))
        self.above: list[float] = list(state.get("above") or [0.0] * len(SURPRISE_LEVELS))

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "above": list(self.above)}

    def exceedances(self, surprise: float) -> float:
        """Decayed number of past rows at least ``surprise`` (interpolated between levels)."""
        levels = SURPRISE_LEVELS
        if surprise <= levels[0]:
            return self.above[0]
        if surprise >= levels[-1]:
            return 0.0
        j = min(int(8 * math.log10(surprise / levels[0])), len(levels) - 2)
        w = math.log10(surprise / levels[j]) * 8
        return (1.0 - w) * self.above[j] + w * self.above[j + 1]

    def calibrated(self, surprise: float) -> float:
        """-log10 of the larger of the model's tail probability and this series' own."""
        if surprise <= 0 or self.half_life_minutes <= 0:
            return surprise
        seen = self.exceedances(surprise)
        if seen <= 0:
            return surprise  # never this surprising here: the model's word stands
        model = 10.0 ** -min(surprise, 300.0)
        empirical = (seen + self.prior_rows * model) / (self.rows + self.prior_rows)
        return min(surprise, -math.log10(empirical))

    def learn(self, surprise: float, minutes: float) -> None:
        keep = 1.0 - decay(minutes, self.half_life_minutes)
        self.rows = self.rows * keep + 1.0
        for j, level in enumerate(SURPRISE_LEVELS):
            self.above[j] = self.above[j] * keep + (1.0 if surprise >= level else 0.0)


class RecentLevel(_LearnedDispersion):
    """An exponentially weighted average of the counts and of their expectations, for level shifts.

    A topic whose chatter doubles for an afternoon (a slow-burning outage, a story that
    keeps being shared) never has one remarkable minute or half hour; its average over
    the last hours does. The average over ``half_life_minutes`` is tested as a sum of its
    effective number of rows, with its own learned dispersion (averages of neighbouring
    rows are burstier than independent rows would be). O(1) state, whatever the half-life.
    """

    def __init__(self, half_life_minutes: float, dispersion_half_life_minutes: float,
                 state: dict[str, Any] | None = None):
        self.half_life_minutes = half_life_minutes
        self.dispersion_half_life_minutes = dispersion_half_life_minutes
        state = state or {}
        self.value: float | None = state.get("value")
        self.expected: float = float(state.get("expected", 0.0))
        self.rows: float = float(state.get("rows", 1.0))
        self.excess_var: float = float(state.get("excess_var", 0.0))
        self.mean_sq: float = float(state.get("mean_sq", 0.0))

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "expected": self.expected, "rows": self.rows,
                "excess_var": self.excess_var, "mean_sq": self.mean_sq}

    def add(self, value: float, expected: float, minutes: float) -> tuple[float, float]:
        """Add this row; return (sum of values, sum of expected) over the effective rows."""
        if self.value is None:
            self.value, self.expected, self.rows = value, expected, 1.0
        elif minutes > 0:
            a = decay(minutes, self.half_life_minutes)
            self.value += a * (value - self.value)
            self.expected += a * (expected - self.expected)
            self.rows = max((2.0 - a) / a, 1.0)
        return self.value * self.rows, self.expected * self.rows

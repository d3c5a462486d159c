"""Numenta Anomaly Benchmark (NAB) scoring, to backtest the detector on labelled tweet volumes.

NAB rewards an early detection inside a labelled anomaly window and charges for
detections outside windows. The rules here follow NAB's own scorer
(``nab/sweeper.py``):

- a detection on row ``i`` inside a window ``[left, right]`` is worth
  ``A_TP * S(-(right - i + 1) / width) / S(-1)`` where ``S(x) = 2 / (1 + e^(5x)) - 1``
  is the scaled sigmoid: exactly ``A_TP`` at the window's first row, falling
  towards 0 at its last;
- a detection outside any window costs ``A_FP * S(|i - right| / (width - 1))``
  measured from the previous window (a small cost just after a window, ``-A_FP``
  far from it, and ``-A_FP`` before the first window);
- only the best detection in a window counts; a window with no detection costs
  ``A_FN``; rows of the probation period (the first 15%, at most 750 rows) are
  not scored at all;
- the threshold is the one that maximises the summed raw score over the files
  being tuned on (NAB sweeps every distinct score);
- normalised: ``100 * (raw - null) / (perfect - null)`` where the null detector
  never fires (``-A_FN`` per window) and the perfect one fires at every window's
  first row (``A_TP`` per window), both summed over the same files.

A detection is a row where an alert would open (``episode_starts``): the rows
an on-call engineer is paged on. With ``reopen_after=0`` every row at or above
the threshold is a detection, which is NAB's plain reading of a score column.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from streams.alerting.detector import Detector, DetectorConfig

PROBATION_FRACTION = 0.15
OUTSIDE = -1
PROBATION = -2


@dataclass(frozen=True)
class Costs:
    """A NAB application profile's weights."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0


STANDARD = Costs()
REWARD_LOW_FP = Costs(tp=1.0, fp=0.22, fn=1.0)
REWARD_LOW_FN = Costs(tp=1.0, fp=0.11, fn=2.0)
PROFILES = {"standard": STANDARD, "reward_low_fp": REWARD_LOW_FP, "reward_low_fn": REWARD_LOW_FN}


def scaled_sigmoid(position: float) -> float:
    """NAB's weight by relative position: -1 is a window's start, 0 its end, >0 past it."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_rows(n_rows: int) -> float:
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_FRACTION * 5000)


@dataclass(frozen=True)
class Series:
    name: str
    timestamps: list[datetime]
    values: list[float]
    windows: list[tuple[datetime, datetime]]


@dataclass(frozen=True)
class RowWeights:
    """What a detection on each row is worth, and which window (if any) it falls in."""

    weight: np.ndarray  # float per row
    window: np.ndarray  # window index per row, or OUTSIDE, or PROBATION
    n_windows: int  # windows with at least one scored row (the ones a miss costs)
    n_labelled: int  # all windows (the perfect detector's count)


def row_weights(series: Series, costs: Costs = STANDARD) -> RowWeights:
    n = len(series.timestamps)
    index = {ts: i for i, ts in enumerate(series.timestamps)}
    bounds = [(index[a], index[b]) for a, b in series.windows]
    weight = np.zeros(n)
    window = np.full(n, OUTSIDE, dtype=np.int64)
    max_tp = scaled_sigmoid(-1.0)
    previous: tuple[int, int] | None = None  # (right edge, width) of the last window passed
    k = 0
    for i in range(n):
        if k < len(bounds) and bounds[k][0] <= i <= bounds[k][1]:
            left, right = bounds[k]
            width = right - left + 1
            weight[i] = costs.tp * scaled_sigmoid(-(right - i + 1) / width) / max_tp
            window[i] = k
            if i == right:
                previous = (right, width)
                k += 1
        elif previous is None:
            weight[i] = costs.fp * scaled_sigmoid(3.0)
        else:
            # NAB divides by (width - 1); a one-row window would divide by zero there.
            weight[i] = costs.fp * scaled_sigmoid(abs(previous[0] - i) / max(previous[1] - 1, 1))
    window[: int(probation_rows(n))] = PROBATION
    scored = np.unique(window[window >= 0])
    return RowWeights(weight, window, len(scored), len(bounds))


@dataclass(frozen=True)
class FileScore:
    raw: float
    detected: int  # windows with a detection
    missed: int  # scored windows without one
    false_alarms: int  # detections outside every window
    first_detections: dict[int, int]  # window index -> row of its earliest detection


def score_detections(rw: RowWeights, rows: Sequence[int] | np.ndarray, costs: Costs = STANDARD) -> FileScore:
    """Raw NAB score of detections given as ascending row indices."""
    rows = np.asarray(rows, dtype=np.int64)
    where = rw.window[rows]
    false = rows[where == OUTSIDE]
    hits = rows[where >= 0]
    best = np.full(rw.n_labelled, -np.inf)
    np.maximum.at(best, rw.window[hits], rw.weight[hits])
    found = np.isfinite(best)
    windows, first = np.unique(rw.window[hits], return_index=True)
    detected = int(found.sum())
    missed = rw.n_windows - detected
    raw = float(rw.weight[false].sum()) + float(best[found].sum()) - costs.fn * missed
    return FileScore(raw, detected, missed, len(false), dict(zip(windows.tolist(), hits[first].tolist(), strict=True)))


def null_score(rw: RowWeights, costs: Costs = STANDARD) -> float:
    return -costs.fn * rw.n_windows


def perfect_score(rw: RowWeights, costs: Costs = STANDARD) -> float:
    return costs.tp * rw.n_labelled


def normalise(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0


# -- the corpus ----------------------------------------------------------------------


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def load_corpus(data_dir: Path) -> dict[str, Series]:
    """Every ``*.csv`` in ``data_dir`` that has windows in ``windows.json`` (NAB format)."""
    windows = json.loads((data_dir / "windows.json").read_text())
    corpus: dict[str, Series] = {}
    for path in sorted(data_dir.glob("*.csv")):
        key = next((k for k in windows if k == path.name or k.endswith("/" + path.name)), None)
        if key is None:
            continue
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        corpus[path.stem] = Series(
            name=path.stem,
            timestamps=[_utc(r["timestamp"]) for r in rows],
            values=[float(r["value"]) for r in rows],
            windows=[(_utc(a), _utc(b)) for a, b in windows[key]],
        )
    return corpus


def resolve(corpus: dict[str, Series], names: Sequence[str]) -> list[str]:
    """Accept ``AAPL``, ``Twitter_volume_AAPL`` or ``Twitter_volume_AAPL.csv``."""
    found = []
    for name in names:
        stem = Path(name.strip()).stem
        matches = [k for k in corpus if k == stem or k.endswith("_" + stem)]
        if len(matches) != 1:
            raise KeyError(f"no single series matches {name!r} (have: {', '.join(corpus)})")
        found.append(matches[0])
    return found


# -- scoring a detector over several files ---------------------------------------------


def anomaly_scores(series: Series, cfg: DetectorConfig) -> np.ndarray:
    """The detector's score for every row, computed online in order (no look-ahead)."""
    det = Detector(cfg)
    observe = det.observe
    return np.array([observe(ts, v).anomaly_score for ts, v in zip(series.timestamps, series.values, strict=True)])


def detections(scores: np.ndarray, threshold: float, reopen_after: int) -> np.ndarray:
    """Rows where an alert opens: at or above ``threshold`` after ``reopen_after`` quiet rows."""
    rows = np.flatnonzero(scores >= threshold)
    if len(rows) == 0:
        return rows
    gaps = np.diff(rows, prepend=rows[0] - reopen_after - 1) - 1
    return rows[gaps >= reopen_after]


@dataclass(frozen=True)
class SetScore:
    threshold: float
    raw: float
    score: float  # normalised over the set
    per_series: dict[str, float]  # normalised per file
    files: dict[str, FileScore]


def score_set(
    weights: dict[str, RowWeights],
    scores: dict[str, np.ndarray],
    names: Sequence[str],
    threshold: float,
    reopen_after: int,
    costs: Costs = STANDARD,
) -> SetScore:
    raw = null = perfect = 0.0
    per_series: dict[str, float] = {}
    files: dict[str, FileScore] = {}
    for name in names:
        rw = weights[name]
        fs = score_detections(rw, detections(scores[name], threshold, reopen_after), costs)
        n, p = null_score(rw, costs), perfect_score(rw, costs)
        raw, null, perfect = raw + fs.raw, null + n, perfect + p
        per_series[name] = normalise(fs.raw, n, p)
        files[name] = fs
    return SetScore(threshold, raw, normalise(raw, null, perfect), per_series, files)


def best_threshold(
    weights: dict[str, RowWeights],
    scores: dict[str, np.ndarray],
    names: Sequence[str],
    reopen_after: int,
    costs: Costs = STANDARD,
    max_candidates: int = 1500,
) -> SetScore:
    """The threshold that maximises the set's raw score, as NAB's optimiser picks it.

    NAB tries every distinct score. So do we when there are at most
    ``max_candidates`` of them; otherwise an evenly spaced (by rank) subset is
    tried first and then every distinct score between the best one's neighbours.
    Ties go to the higher threshold (fewer alerts for the same score).
    """
    distinct = np.unique(np.concatenate([scores[n][scores[n] > 0] for n in names]))[::-1]
    never = float(distinct[0]) + 1.0 if len(distinct) else 1.0

    def at(t: float) -> SetScore:
        return score_set(weights, scores, names, t, reopen_after, costs)

    if len(distinct) <= max_candidates:
        picks = np.arange(len(distinct))
    else:
        picks = np.unique(np.linspace(0, len(distinct) - 1, max_candidates).round().astype(int))
    best, best_pick = at(never), -1
    for p in picks:
        result = at(float(distinct[p]))
        if result.raw > best.raw + 1e-12:
            best, best_pick = result, int(p)
    if best_pick >= 0 and len(picks) < len(distinct):
        i = int(np.searchsorted(picks, best_pick))
        lo = int(picks[i - 1]) + 1 if i > 0 else 0
        hi = int(picks[i + 1]) if i + 1 < len(picks) else len(distinct)
        for p in range(lo, hi):
            result = at(float(distinct[p]))
            if result.raw > best.raw + 1e-12:
                best = result
    return best


def delays_minutes(series: Series, fs: FileScore) -> list[float | None]:
    """Per window: minutes from its first row to the first detection in it (None: missed)."""
    out: list[float | None] = []
    for k, (start, _end) in enumerate(series.windows):
        row = fs.first_detections.get(k)
        out.append(None if row is None else (series.timestamps[row] - start).total_seconds() / 60.0)
    return out


# -- tuning on some series, reporting on the others --------------------------------------

# Settings tried when tuning (each combined with the base config), and alert re-open gaps
# in rows. Small on purpose: a handful of settings that matter for 5-minute tweet volumes.
TUNING_GRID: tuple[dict[str, float], ...] = tuple(
    {"level_half_life_minutes": level, "clip_sigmas": clip, "window_minutes": window}
    for level in (12 * 60.0, 24 * 60.0)
    for clip in (2.0, 3.0)
    for window in (0.0, 30.0)
)
REOPEN_CHOICES = (12, 48, 144, 288)


@dataclass(frozen=True)
class Tuned:
    cfg: DetectorConfig  # threshold and reopen_after set to the chosen values
    settings: dict[str, float]
    result: SetScore  # on the tuning series


def score_grid(
    corpus: dict[str, Series], base: DetectorConfig, grid: Sequence[dict[str, float]]
) -> list[dict[str, np.ndarray]]:
    """Online scores of every series under every setting (computing is not tuning)."""
    return [{n: anomaly_scores(s, replace_cfg(base, g)) for n, s in corpus.items()} for g in grid]


def tune(
    weights: dict[str, RowWeights],
    grid_scores: Sequence[dict[str, np.ndarray]],
    base: DetectorConfig,
    grid: Sequence[dict[str, float]],
    names: Sequence[str],
    reopen_choices: Sequence[int] = REOPEN_CHOICES,
    costs: Costs = STANDARD,
) -> Tuned:
    """The setting, re-open gap and threshold that score best on ``names`` only."""
    best: Tuned | None = None
    for settings, scores in zip(grid, grid_scores, strict=True):
        for reopen in reopen_choices:
            result = best_threshold(weights, scores, names, reopen, costs)
            if best is None or result.raw > best.result.raw + 1e-12:
                threshold = min(max(result.threshold, 1e-9), 1.0)
                cfg = replace_cfg(base, {**settings, "threshold": threshold, "reopen_after": reopen})
                best = Tuned(cfg, dict(settings), result)
    assert best is not None
    return best


def replace_cfg(cfg: DetectorConfig, changes: dict[str, float]) -> DetectorConfig:
    typed = {k: int(v) if k == "reopen_after" else float(v) for k, v in changes.items()}
    return replace(cfg, **typed)

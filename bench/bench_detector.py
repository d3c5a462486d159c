"""Spike detector figures: rows/s (one process) and NAB scores on the realTweets series.

The protocol of ``earful eval-detector``: threshold, reopen_after and the settings grid
(``nab.TUNING_GRID``) are chosen on the tuning series only (``DEFAULT_TUNE_ON``), then applied
to the held-out series. ``earful eval-detector`` prints the same scores per series, with delays.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from streams.alerting import nab
from streams.alerting.detect_cli import DEFAULT_TUNE_ON
from streams.alerting.detector import DetectorConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab-realtweets"


def run() -> dict[str, float]:
    corpus = nab.load_corpus(DATA)
    base = DetectorConfig()
    started = time.perf_counter()
    scores = {name: nab.anomaly_scores(s, base) for name, s in corpus.items()}
    elapsed = time.perf_counter() - started
    rows = sum(len(s.values) for s in corpus.values())

    weights = {name: nab.row_weights(s) for name, s in corpus.items()}
    tuning = nab.resolve(corpus, DEFAULT_TUNE_ON.split(","))
    held_out = [n for n in corpus if n not in tuning]
    grid = nab.TUNING_GRID
    grid_scores = nab.score_grid(corpus, base, grid)
    tuned = nab.tune(weights, grid_scores, base, grid, tuning)
    scores = grid_scores[list(grid).index(tuned.settings)]
    cfg = tuned.cfg
    figures: dict[str, float] = {"detector rows/s (one process)": rows / elapsed}
    for role, names in (("tuning", tuning), ("held-out", held_out)):
        result = nab.score_set(weights, scores, names, cfg.threshold, cfg.reopen_after)
        delays = [d for n in names for d in nab.delays_minutes(corpus[n], result.files[n]) if d is not None]
        figures[f"NAB standard, {role} ({'+'.join(n.rsplit('_', 1)[-1] for n in names)})"] = result.score
        figures[f"mean alert delay, {role} (minutes)"] = float(np.mean(delays)) if delays else float("nan")
    figures["threshold chosen on tuning series"] = cfg.threshold
    return figures


if __name__ == "__main__":
    for name, value in run().items():
        print(f"  {name:<44} {value:,.2f}")

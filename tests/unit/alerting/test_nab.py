from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from streams.alerting import nab
from streams.alerting.detector import DetectorConfig

START = datetime(2015, 3, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)


def series(n: int = 100, windows: tuple[tuple[int, int], ...] = ((40, 49),), name: str = "s") -> nab.Series:
    ts = [START + i * STEP for i in range(n)]
    return nab.Series(name, ts, [1.0] * n, [(ts[a], ts[b]) for a, b in windows])


def raw(rows: list[int], s: nab.Series | None = None) -> float:
    return nab.score_detections(nab.row_weights(s or series()), rows).raw


def test_scaled_sigmoid_matches_nab_reference_points():
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(3.0) == -1.0


def test_probation_is_fifteen_percent_capped_at_750_rows():
    assert nab.probation_rows(100) == 15
    assert nab.probation_rows(15_900) == 750


def test_a_detection_at_the_window_start_is_worth_a_true_positive():
    assert raw([40]) == pytest.approx(1.0)
    rw = nab.row_weights(series())
    assert nab.normalise(raw([40]), nab.null_score(rw), nab.perfect_score(rw)) == pytest.approx(100.0)


def test_no_detection_costs_a_false_negative_and_normalises_to_zero():
    rw = nab.row_weights(series())
    assert raw([]) == -1.0
    assert nab.normalise(raw([]), nab.null_score(rw), nab.perfect_score(rw)) == 0.0


def test_a_late_detection_is_worth_less_and_only_the_best_in_a_window_counts():
    last = (2 / (1 + math.exp(-0.5)) - 1) / nab.scaled_sigmoid(-1.0)  # position -(1/10)
    assert raw([49]) == pytest.approx(last)
    assert raw([40, 45, 49]) == pytest.approx(1.0)
    assert raw([45]) < raw([42]) < 1.0


def test_a_false_positive_costs_the_fp_weight():
    assert raw([20]) == pytest.approx(-1.0 - 0.11)  # before any window: the full A_FP
    assert raw([20, 40]) == pytest.approx(1.0 - 0.11)
    just_after = 0.11 * (2 / (1 + math.exp(5 * 1 / 9)) - 1)  # one row past a 10-row window
    assert raw([40, 50]) == pytest.approx(1.0 + just_after)
    assert raw([40, 99]) == pytest.approx(1.0 - 0.11)  # far past: -A_FP


def test_probation_rows_are_not_scored():
    assert raw([5, 14]) == -1.0
    assert raw([15]) == pytest.approx(-1.11)


def test_file_score_counts():
    fs = nab.score_detections(nab.row_weights(series(windows=((40, 49), (70, 79)))), [20, 42, 45, 90])
    assert (fs.detected, fs.missed, fs.false_alarms) == (1, 1, 2)
    assert fs.first_detections == {0: 42}


def test_alert_openings_need_quiet_rows_between_them():
    scores = np.zeros(30)
    scores[[3, 4, 5, 9, 20, 21]] = 0.9
    assert nab.detections(scores, 0.5, 3).tolist() == [3, 9, 20]
    assert nab.detections(scores, 0.5, 4).tolist() == [3, 20]
    assert nab.detections(scores, 0.5, 0).tolist() == [3, 4, 5, 9, 20, 21]
    assert nab.detections(scores, 0.95, 0).tolist() == []


def test_threshold_is_chosen_to_maximise_the_score():
    s = series()
    scores = np.zeros(100)
    scores[20] = 0.6  # a false alarm
    scores[30] = 0.3  # another, lower
    scores[44] = 0.7  # the anomaly, caught mid-window
    w = {"s": nab.row_weights(s)}
    best = nab.best_threshold(w, {"s": scores}, ["s"], reopen_after=0)
    assert best.threshold == pytest.approx(0.7)
    assert best.files["s"].false_alarms == 0 and best.files["s"].detected == 1
    # Were the anomaly scored below the false alarm, firing on both would still beat firing on neither.
    scores[44] = 0.5
    best = nab.best_threshold(w, {"s": scores}, ["s"], reopen_after=0)
    assert best.threshold == pytest.approx(0.5)
    assert best.raw == pytest.approx(raw([20, 44]))


def test_a_coarse_sweep_refines_around_its_best_candidate():
    s = series(n=2000, windows=((1000, 1099),))
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 0.5, 2000)
    scores[1010] = 0.49999  # ranks among the noise; only an exhaustive look finds the exact value
    w = {"s": nab.row_weights(s)}
    exhaustive = nab.best_threshold(w, {"s": scores}, ["s"], 0, max_candidates=5000)
    coarse = nab.best_threshold(w, {"s": scores}, ["s"], 0, max_candidates=50)
    assert coarse.raw == pytest.approx(exhaustive.raw)


def test_scores_of_a_prefix_are_the_prefix_of_the_scores():
    rng = np.random.default_rng(3)
    n = 3000
    ts = [START + i * STEP for i in range(n)]
    values = rng.poisson(20, n).astype(float)
    values[2500] = 200.0
    full = nab.anomaly_scores(nab.Series("x", ts, list(values), []), DetectorConfig())
    prefix = nab.anomaly_scores(nab.Series("x", ts[:2501], list(values[:2501]), []), DetectorConfig())
    assert np.array_equal(full[:2501], prefix)
    assert prefix[-1] > 0.5


def test_corpus_loading_and_names(tmp_path):
    s = series()
    lines = ["timestamp,value"] + [f"{t:%Y-%m-%d %H:%M:%S},{v:g}" for t, v in zip(s.timestamps, s.values, strict=True)]
    (tmp_path / "Twitter_volume_X.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "windows.json").write_text(json.dumps({"realTweets/Twitter_volume_X.csv": [
        [f"{s.timestamps[40]:%Y-%m-%d %H:%M:%S}.000000", f"{s.timestamps[49]:%Y-%m-%d %H:%M:%S}.000000"]]}))
    corpus = nab.load_corpus(tmp_path)
    assert list(corpus) == ["Twitter_volume_X"]
    assert corpus["Twitter_volume_X"].windows == s.windows
    assert nab.resolve(corpus, ["X", "Twitter_volume_X.csv"]) == ["Twitter_volume_X"] * 2
    with pytest.raises(KeyError):
        nab.resolve(corpus, ["Y"])

from __future__ import annotations

import csv
import io
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.cli import cli

START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
STEP = timedelta(minutes=5)
DAYS = 3
SPIKE = DAYS * 288 - 100  # a row on the third day, after the day of warm-up


def counts(spike: float | None = None, seed: int = 5) -> list[tuple[datetime, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(DAYS * 288):
        ts = START + i * STEP
        rate = 60 + 40 * math.cos((ts.hour - 14) / 24 * 2 * math.pi)
        # Normal approximation of a Poisson count is plenty for a backtest fixture.
        value = max(0, round(rng.gauss(rate, math.sqrt(rate))))
        rows.append((ts, value))
    if spike is not None:
        rows[SPIKE] = (rows[SPIKE][0], int(spike))
    return rows


def write(path, rows, time_col="time", value_col="mentions"):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([time_col, value_col])
        for ts, v in rows:
            w.writerow([ts.isoformat(), v])
    return path


def detect(*args: str) -> list[dict[str, str]]:
    result = CliRunner().invoke(cli, ["detect", *args])
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.output)))


def test_output_columns_and_scores_in_range(tmp_path):
    out = detect(str(write(tmp_path / "c.csv", counts())), "--time-col", "time", "--value-col", "mentions")
    assert list(out[0]) == ["timestamp", "value", "expected", "anomaly_score", "alert"]
    assert len(out) == DAYS * 288
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in out)
    assert out[0]["timestamp"] == START.isoformat()


def test_a_quiet_series_raises_no_alert(tmp_path):
    out = detect(str(write(tmp_path / "c.csv", counts())), "--time-col", "time", "--value-col", "mentions")
    assert not any(r["alert"] == "1" for r in out)


def test_an_injected_spike_opens_an_alert_on_its_row(tmp_path):
    out = detect(str(write(tmp_path / "c.csv", counts(spike=600))), "--time-col", "time", "--value-col", "mentions")
    assert [i for i, r in enumerate(out) if r["alert"] == "1"] == [SPIKE]
    assert float(out[SPIKE]["anomaly_score"]) > 0.5


def test_output_of_a_prefix_is_the_prefix_of_the_output(tmp_path):
    rows = counts(spike=600)
    full = detect(str(write(tmp_path / "a.csv", rows)), "--time-col", "time", "--value-col", "mentions")
    part = detect(str(write(tmp_path / "b.csv", rows[: SPIKE + 1])), "--time-col", "time", "--value-col", "mentions")
    assert full[: SPIKE + 1] == part


def test_a_declared_busy_period_suppresses_the_alert(tmp_path):
    rows = counts(spike=600)
    at = rows[SPIKE][0]
    config = tmp_path / "detector.yaml"
    config.write_text(json.dumps({"detector": {"overrides": [{
        "start": (at - timedelta(hours=1)).isoformat(), "end": (at + timedelta(hours=1)).isoformat(),
        "multiplier": 8, "name": "lodgement deadline"}]}}))
    path = str(write(tmp_path / "c.csv", rows))
    out = detect(path, "--time-col", "time", "--value-col", "mentions", "--config", str(config))
    assert not any(r["alert"] == "1" for r in out)
    assert float(out[SPIKE]["expected"]) > 4 * 60


def test_the_workers_config_file_is_read_for_its_alerting_detector(tmp_path):
    rows = counts(spike=600)
    at = rows[SPIKE][0]
    config = tmp_path / "earful.yaml"
    config.write_text(json.dumps({"sources": [], "subscriptions": [], "alerting": {"per_source": False, "detector": {
        "min_count": 1000, "overrides": [{"start": (at - timedelta(hours=1)).isoformat(),
                                          "end": (at + timedelta(hours=1)).isoformat(), "multiplier": 8}]}}}))
    path = str(write(tmp_path / "c.csv", rows))
    out = detect(path, "--time-col", "time", "--value-col", "mentions", "--config", str(config))
    assert not any(r["alert"] == "1" for r in out)
    assert float(out[SPIKE]["expected"]) > 4 * 60
    bare = tmp_path / "no-alerting.yaml"
    bare.write_text(json.dumps({"sources": [], "subscriptions": []}))  # the detector's defaults
    assert detect(path, "--time-col", "time", "--value-col", "mentions", "--config", str(bare)) == \
        detect(path, "--time-col", "time", "--value-col", "mentions")
    shipped = Path(__file__).resolve().parents[3] / "deploy" / "earful.yaml"
    assert len(detect(path, "--time-col", "time", "--value-col", "mentions", "--config", str(shipped))) == len(rows)


def test_a_high_floor_keeps_a_small_topic_quiet(tmp_path):
    path = str(write(tmp_path / "c.csv", counts(spike=600)))
    out = detect(path, "--time-col", "time", "--value-col", "mentions", "--min-count", "1000")
    assert not any(r["alert"] == "1" for r in out)


def test_a_missing_column_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["detect", str(write(tmp_path / "c.csv", counts())), "--value-col", "nope"])
    assert result.exit_code != 0
    assert "no column" in result.output


@pytest.fixture
def nab_dir(tmp_path):
    for name, seed in (("Twitter_volume_A", 1), ("Twitter_volume_B", 2)):
        rows = counts(spike=800, seed=seed)
        with (tmp_path / f"{name}.csv").open("w") as f:
            f.write("timestamp,value\n")
            f.writelines(f"{ts:%Y-%m-%d %H:%M:%S},{v}\n" for ts, v in rows)
        start, end = rows[SPIKE - 40][0], rows[SPIKE + 40][0]
        windows = json.loads((tmp_path / "windows.json").read_text()) if (tmp_path / "windows.json").exists() else {}
        windows[f"realTweets/{name}.csv"] = [[f"{start:%Y-%m-%d %H:%M:%S}.000000", f"{end:%Y-%m-%d %H:%M:%S}.000000"]]
        (tmp_path / "windows.json").write_text(json.dumps(windows))
    return tmp_path


def test_eval_detector_reports_tuning_and_held_out_series(nab_dir):
    result = CliRunner().invoke(cli, ["eval-detector", "--data", str(nab_dir), "--tune-on", "A", "--no-grid"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:2] == ["A", "tuning"] for line in lines)
    held = next(line.split() for line in lines if line.split()[:2] == ["B", "held-out"])
    assert 85 < float(held[3]) < 100  # caught at its peak, halfway into the window
    assert held[5] == "1"  # the window was found


def test_eval_detector_rejects_an_unknown_series(nab_dir):
    result = CliRunner().invoke(cli, ["eval-detector", "--data", str(nab_dir), "--tune-on", "Z", "--no-grid"])
    assert result.exit_code != 0
    assert "no single series" in result.output

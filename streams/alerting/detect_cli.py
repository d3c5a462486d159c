"""``earful detect`` and ``earful eval-detector``: the stream's spike detector, run over files.

``detect`` backtests a topic's settings on a count series (CSV) and prints one
row per input row; ``eval-detector`` scores the detector on the labelled
tweet volumes of the Numenta Anomaly Benchmark, tuning on some series and
reporting on the others.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from streams.alerting import nab
from streams.alerting.detector import Detector, DetectorConfig

DEFAULT_NAB_DIR = Path("../shared/data/nab-realtweets")
DEFAULT_TUNE_ON = "AAPL,AMZN,CRM"
#: top-level keys of the worker's config file (deploy/earful.yaml)
WORKER_SECTIONS = {"alerting", "sources", "subscriptions", "ingest"}


def load_config(path: Path | None, topic: str | None, overrides: dict[str, Any]) -> DetectorConfig:
    """Detector settings from a YAML file: the worker's config file (``alerting.detector``),
    or the mapping itself, or under ``detector:``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise click.ClickException(f"cannot read {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise click.ClickException(f"{path}: expected a mapping of detector settings")
        if WORKER_SECTIONS & set(loaded):  # the worker's config file, with or without its alerting section
            alerting = loaded.get("alerting") or {}
            loaded = (alerting.get("detector") if isinstance(alerting, dict) else None) or {}
        data = dict(loaded.get("detector", loaded))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = DetectorConfig.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise click.ClickException(f"invalid detector settings: {exc}") from exc
    return cfg.for_topic(topic) if topic else cfg


def _parse_time(text: str) -> datetime:
    text = text.strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)  # epoch seconds
    except ValueError as exc:
        raise ValueError(f"not a timestamp: {text!r}") from exc


def _rows(path: Path, time_col: str, value_col: str) -> Iterator[tuple[str, datetime, float]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {time_col, value_col} - set(reader.fieldnames or ())
        if missing:
            raise click.ClickException(f"{path}: no column {', '.join(sorted(missing))} (have: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                yield row[time_col], _parse_time(row[time_col]), float(row[value_col] or 0)
            except ValueError as exc:
                raise click.ClickException(f"{path}:{line}: {exc}") from exc


@click.command("detect")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--time-col", default="timestamp", show_default=True, help="Column with ISO-8601 times (naive: UTC) or epoch seconds.")
@click.option("--value-col", default="value", show_default=True, help="Column with the count.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Detector settings YAML: the worker's config file, or the mapping (or under 'detector:').")
@click.option("--topic", help="Apply this topic's sensitivity and calendar overrides.")
@click.option("--threshold", type=float, help="anomaly_score a row needs to be anomalous.")
@click.option("--min-count", type=float,
              help="A count below this is never a spike (a row, or the sum a longer test adds up).")
def detect(path: Path, time_col: str, value_col: str, config_path: Path | None, topic: str | None,
           threshold: float | None, min_count: float | None) -> None:
    """Run the spike detector over a count series; CSV to stdout.

    Columns: timestamp,value,expected,anomaly_score,alert. Rows are scored in
    order with no look-ahead, exactly as the stream scores them; alert is 1 on
    the row where an alert opens (anomalous after reopen_after quiet rows).
    """
    cfg = load_config(config_path, topic, {"threshold": threshold, "min_count": min_count})
    det = Detector(cfg)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["timestamp", "value", "expected", "anomaly_score", "alert"])
    quiet = cfg.reopen_after  # the series starts quiet
    for raw_ts, ts, value in _rows(path, time_col, value_col):
        obs = det.observe(ts, value)
        opens = obs.is_anomalous and quiet >= cfg.reopen_after
        quiet = 0 if obs.is_anomalous else quiet + 1
        out.writerow([raw_ts, f"{value:g}", f"{obs.expected:.3f}", f"{obs.anomaly_score:.4f}", int(opens)])


@click.command("eval-detector")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=DEFAULT_NAB_DIR, show_default=True, help="NAB-format folder: *.csv and windows.json.")
@click.option("--tune-on", default=DEFAULT_TUNE_ON, show_default=True,
              help="Series to choose settings and threshold on; the others are held out.")
@click.option("--cross-validate", is_flag=True, help="Also hold out each series in turn (tune on the rest).")
@click.option("--no-grid", is_flag=True, help="Keep the given settings; tune only threshold and reopen_after.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Base detector settings YAML.")
@click.option("--profile", type=click.Choice(sorted(nab.PROFILES)), default="standard", show_default=True)
@click.option("--every-row", is_flag=True,
              help="Count every row at or above the threshold as a detection, not only alert openings.")
def eval_detector(data_dir: Path, tune_on: str, cross_validate: bool, no_grid: bool,
                  config_path: Path | None, profile: str, every_row: bool) -> None:
    """Score the detector on NAB series: tune on some, report held-out scores on the others."""
    costs = nab.PROFILES[profile]
    corpus = nab.load_corpus(data_dir)
    if not corpus:
        raise click.ClickException(f"{data_dir}: no series with windows")
    try:
        tuning = nab.resolve(corpus, [n for n in tune_on.split(",") if n.strip()])
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    held_out = [n for n in corpus if n not in tuning]
    base = load_config(config_path, None, {})
    grid = ({},) if no_grid else nab.TUNING_GRID
    reopen = (0,) if every_row else nab.REOPEN_CHOICES
    weights = {n: nab.row_weights(s, costs) for n, s in corpus.items()}
    click.echo(f"scoring {len(corpus)} series under {len(grid)} setting(s), online ...", err=True)
    grid_scores = nab.score_grid(corpus, base, grid)

    tuned = nab.tune(weights, grid_scores, base, grid, tuning, reopen, costs)
    scores = grid_scores[list(grid).index(tuned.settings)]
    cfg = tuned.cfg
    detection = "every row at or above the threshold" if every_row else "alert openings"
    click.echo(f"NAB {profile} profile; detections: {detection}; probation 15% (max 750 rows)")
    click.echo(f"tuned on {', '.join(_short(n) for n in tuning)}: threshold={cfg.threshold:.4f} "
               f"reopen_after={cfg.reopen_after} rows " + " ".join(f"{k}={v:g}" for k, v in tuned.settings.items()))
    click.echo(f"{'series':<8} {'role':<9} {'raw':>7} {'score':>6} {'windows':>7} {'found':>5} "
               f"{'false':>5} {'delay_min':>9}")
    for role, names in (("tuning", tuning), ("held-out", held_out)):
        if not names:
            continue
        result = nab.score_set(weights, scores, names, cfg.threshold, cfg.reopen_after, costs)
        all_delays: list[float] = []
        for n in names:
            fs = result.files[n]
            found = [d for d in nab.delays_minutes(corpus[n], fs) if d is not None]
            all_delays += found
            click.echo(f"{_short(n):<8} {role:<9} {fs.raw:7.3f} {result.per_series[n]:6.1f} "
                       f"{weights[n].n_labelled:7d} {fs.detected:5d} {fs.false_alarms:5d} {_mean(found):>9}")
        click.echo(f"{'all':<8} {role:<9} {result.raw:7.3f} {result.score:6.1f} "
                   f"{sum(weights[n].n_labelled for n in names):7d} "
                   f"{sum(result.files[n].detected for n in names):5d} "
                   f"{sum(result.files[n].false_alarms for n in names):5d} {_mean(all_delays):>9}")

    if cross_validate:
        click.echo("leave-one-out: each series scored with settings tuned on the other series")
        for n in corpus:
            rest = [m for m in corpus if m != n]
            fold = nab.tune(weights, grid_scores, base, grid, rest, reopen, costs)
            fold_scores = grid_scores[list(grid).index(fold.settings)]
            r = nab.score_set(weights, fold_scores, [n], fold.cfg.threshold, fold.cfg.reopen_after, costs)
            found = [d for d in nab.delays_minutes(corpus[n], r.files[n]) if d is not None]
            click.echo(f"{_short(n):<8} held-out {r.raw:7.3f} {r.score:6.1f}  delay_min {_mean(found)}  "
                       f"(threshold {fold.cfg.threshold:.4f}, reopen_after {fold.cfg.reopen_after}, "
                       + " ".join(f"{k}={v:g}" for k, v in fold.settings.items()) + ")")


def _short(name: str) -> str:
    return name.rsplit("_", 1)[-1]


def _mean(values: list[float]) -> str:
    return f"{float(np.mean(values)):.0f}" if values else "-"


commands = [detect, eval_detector]

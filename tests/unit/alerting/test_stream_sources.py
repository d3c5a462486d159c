"""Per-source alert series in the worker: turning per-source alerts off leaves none open for good."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import pytest
import yaml

from schemas.records import Alert, AlertSample
from streams.alerting import stream as stream_module
from streams.alerting.counting import CountRecord
from streams.alerting.stream import AlertingStream
from streams.alerting.watch import Watch, series_key
from streams.settings import Settings

WINDOW = 60.0
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC).timestamp()


class _Evidence:
    def __init__(self, *_: Any) -> None:
        pass

    async def __call__(self, topic: str, source: str | None, start: datetime, end: datetime):
        return [AlertSample(id="m1", source=source or "mastodon", text="portal down", url=None)], ["down"]


def _stream(tmp_path: Path, per_source: bool) -> AlertingStream:
    config = tmp_path / "earful.yaml"
    config.write_text(yaml.safe_dump({"alerting": {
        "per_source": per_source,
        "detector": {"warmup_minutes": 10, "window_minutes": 0, "min_count": 5},
        "lifecycle": {"calm_windows": 2, "cooldown": "5m"},
    }}))
    app = faust.App("earful-unit-sources", broker="kafka://127.0.0.1:1")
    return AlertingStream(app, Settings(config_file=config, alert_window_seconds=WINDOW),
                          topics=lambda: {"outage": None})


@pytest.fixture(autouse=True)
def _no_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "MentionEvidence", _Evidence)


def _drive(stream: AlertingStream, series: dict[str, Any], counts: dict[tuple[str, float], float],
           published: list[Alert], minutes: range) -> None:
    import asyncio

    async def publish(alert: Alert) -> None:
        published.append(alert)

    stream.series = series  # type: ignore[assignment]
    stream._value = lambda table, key, start: counts.get((key, start), 0.0)  # type: ignore[method-assign]
    stream._authors = lambda key, start: 1  # type: ignore[method-assign]
    stream._publish = publish  # type: ignore[method-assign]
    partition = stream_module.partition_for("outage", stream.partitions)
    for minute in minutes:
        until = T0 + WINDOW * (minute + 1)
        tick = CountRecord(kind="tick", until=until, now=until)
        asyncio.run(stream._close(partition, tick))


def test_a_source_alert_open_when_per_source_alerts_are_turned_off_still_resolves(tmp_path: Path) -> None:
    key = series_key("outage", "reddit")
    counts: dict[tuple[str, float], float] = {}
    for minute in range(40):
        start = T0 + WINDOW * minute
        reddit = 60.0 if minute == 20 else 1.0
        counts[(key, start)] = reddit
        counts[("outage", start)] = 2.0 + reddit if minute != 20 else 3.0  # the topic as a whole barely moves
    series: dict[str, Any] = {"outage": {**Watch(_stream(tmp_path, True).cfg).new_state(T0), "sources": ["reddit"]}}
    published: list[Alert] = []
    _drive(_stream(tmp_path, True), series, counts, published, range(21))
    assert [(a.source, a.status) for a in published] == [("reddit", "open")]

    # A restart with per-source alerts off: the open one is followed to its all clear, then dropped.
    off = _stream(tmp_path, False)
    assert not off.cfg.per_source
    _drive(off, series, counts, published, range(21, 40))
    assert [(a.source, a.status) for a in published] == [("reddit", "open"), ("reddit", "resolved")]
    assert published[0].id == published[1].id
    closed_until = series[key]["closed_until"]
    _drive(off, series, counts, published, range(40, 45))
    assert series[key]["closed_until"] == closed_until  # no longer followed once resolved

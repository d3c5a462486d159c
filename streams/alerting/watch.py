"""Watching one count series: closed windows in, alert events out, state kept as plain data.

A series is a topic overall, or a topic on one source. Each closed window goes through the
series' detector (is this count improbably high for this time of day and week?) and then
its alert lifecycle (open, update, resolve, cooldown). Both keep their state as JSON-ready
dicts, which the worker stores in a Faust table: after a restart the baseline, the open
alert and its calm-window count carry on where they were.

The same code runs in the stream and in tests; only the windows' source and the evidence
lookup (sample mentions and top terms, from Elasticsearch in the worker) differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.records import Alert, AlertSample
from streams.alerting.delivery import DeliverySettings
from streams.alerting.detector import Detector, DetectorConfig
from streams.alerting.lifecycle import AlertTracker, LifecycleConfig

__all__ = ["AlertingConfig", "Evidence", "Watch", "series_key"]

#: (topic, source, window start, window end) -> (sample mentions, top terms)
Evidence = Callable[[str, "str | None", datetime, datetime], Awaitable[tuple[list[AlertSample], list[str]]]]


def series_key(topic: str, source: str | None) -> str:
    return topic if source is None else f"{topic}\x1f{source}"


@dataclass(frozen=True)
class AlertingConfig:
    """The ``alerting`` section of the config file, with the window size from settings."""

    detector: DetectorConfig
    lifecycle: LifecycleConfig
    window_seconds: float
    per_source: bool = False
    version: str = ""
    delivery: DeliverySettings = DeliverySettings()

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, *, window_seconds: float,
                    kibana_url: str | None = None, taxonomy_version: str = "") -> AlertingConfig:
        section = dict(section or {})
        unknown = set(section) - {"detector", "lifecycle", "per_source", "delivery"}
        if unknown:
            raise ValueError(f"alerting: unknown settings {', '.join(sorted(unknown))}")
        # The version names the rules an alert was raised under: the alerting section and the taxonomy.
        digest = hashlib.sha1(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:8]
        version = f"alerting-{digest}" + (f"+{taxonomy_version}" if taxonomy_version else "")
        lifecycle = dict(section.get("lifecycle") or {})
        lifecycle.setdefault("window", timedelta(seconds=window_seconds))
        lifecycle.setdefault("config_version", version)
        if kibana_url:
            lifecycle.setdefault("kibana_url", kibana_url)
        return cls(
            detector=DetectorConfig.from_dict(section.get("detector")),
            lifecycle=LifecycleConfig.model_validate(lifecycle),
            window_seconds=window_seconds,
            per_source=bool(section.get("per_source", False)),
            version=version,
            delivery=DeliverySettings.model_validate(section.get("delivery") or {}),
        )


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class Watch:
    """Closes windows of series; holds no state of its own between calls."""

    def __init__(self, cfg: AlertingConfig) -> None:
        self.cfg = cfg
        self._detector_cfgs: dict[str, DetectorConfig] = {}

    def detector_cfg(self, topic: str) -> DetectorConfig:
        if topic not in self._detector_cfgs:
            self._detector_cfgs[topic] = self.cfg.detector.for_topic(topic)
        return self._detector_cfgs[topic]

    def new_state(self, first_window: float) -> dict[str, Any]:
        """A series seen for the first time starts at ``first_window`` (no invented history)."""
        return {"closed_until": first_window, "detector": None, "tracker": None}

    def due(self, state: Mapping[str, Any], horizon: float) -> list[float]:
        """Starts of the windows of this series that end at or before ``horizon``, not yet closed."""
        step = self.cfg.window_seconds
        start = float(state["closed_until"])
        count = max(int((horizon - start) // step), 0)
        return [start + i * step for i in range(count)]

    async def close(
        self,
        state: Mapping[str, Any],
        topic: str,
        source: str | None,
        windows: Iterable[tuple[float, float, int | None]],
        now: datetime,
        evidence: Evidence,
    ) -> tuple[dict[str, Any], list[Alert]]:
        """Feed closed windows ``(start, count, distinct authors or None)`` in order; return the new
        state and the alert events."""
        dcfg = self.detector_cfg(topic)
        detector = Detector.from_state(dcfg, state["detector"]) if state.get("detector") else Detector(dcfg)
        tracker = AlertTracker.from_state(self.cfg.lifecycle, state.get("tracker"))
        closed_until = float(state["closed_until"])
        alerts: list[Alert] = []
        step = self.cfg.window_seconds
        for start, value, authors in windows:
            if start < closed_until:
                continue  # closed already (a redelivered tick)
            ts = _dt(start)
            obs = detector.observe(ts, value)
            samples: list[AlertSample] = []
            terms: list[str] = []
            if obs.is_anomalous:
                samples, terms = await evidence(topic, source, ts, _dt(start + step))
            alert = tracker.step(
                topic=topic, source=source, window_start=ts, observed=obs.value, expected=obs.expected,
                score=obs.anomaly_score, is_anomalous=obs.is_anomalous, severity=obs.severity,
                samples=samples, top_terms=terms, now=now, authors=authors, calm_below=dcfg.min_count,
            )
            if alert is not None:
                alerts.append(alert)
            closed_until = start + step
        return {"closed_until": closed_until, "detector": detector.state(), "tracker": tracker.state()}, alerts

"""The alert lifecycle: one alert per topic episode, never a storm.

Per (topic, source-or-None) an episode goes::

    quiet ──anomalous──► open ──(severity rises | count grows by update_factor)──► update ...
                           │   ▲
                           │   └──anomalous within the cooldown: the same alert, open again
                           └──calm for calm_windows windows in a row──► resolved ──cooldown──► quiet

"Calm" means the observed count is back at or below ``expected × calm_factor``, not merely
below the alert threshold: a spike that hovers just under the threshold is still a spike,
and resolving it would reopen it a minute later. A window below the detector's count floor
(``calm_below``) that the detector does not flag is calm too: on a topic with a mention an
hour, 2 a minute after a spike is over, not "twenty times the usual".

A spike within the cooldown after a resolve is the same episode: its alert opens again (same
id, status "open", a later sequence, a severity no lower than before) rather than a new alert,
so nothing is lost and the "all clear" is taken back where it was premature. Each time an
alert comes back, the calm windows it needs before the next resolve double (at most twice), so
a topic that flaps between busy and calm sends fewer messages, not a storm.

The tracker is pure: it is fed one window at a time and returns the ``Alert`` event to emit,
or None. Its state is a JSON-serialisable dict so the worker can keep it in a Faust table:
after a restart mid-episode the same alert id carries on (no duplicate open) and the resolve
still comes. Windows at or before the last one seen for a key are ignored, because a
redelivered count record must not count as a second calm window.

Time in the lifecycle (cooldown, replays) is window time, so the batch ``earful detect``
over history behaves as the stream did; ``now`` only stamps the alert.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from schemas.records import Alert, AlertSample, Severity
from streams.alerting.subscriptions import Duration

__all__ = ["SEVERITIES", "AlertTracker", "LifecycleConfig", "alert_id", "kibana_discover_url"]

SEVERITIES: tuple[Severity, ...] = ("info", "minor", "major", "critical")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
STATE_VERSION = 1
# An alert that came back needs twice the calm windows before its next all clear, and twice
# again after a second return, but no more: calm is "at most calm_factor x expected", which
# ordinary chatter breaks now and then, so a longer run could keep an alert open for days.
MAX_DOUBLINGS = 2


class LifecycleConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    calm_windows: int = Field(default=3, ge=1, description="consecutive calm windows before a resolve")
    calm_factor: float = Field(default=1.2, ge=1.0, description="calm: observed <= expected * calm_factor")
    update_factor: float = Field(
        default=1.5, gt=1.0, description="an update needs the count to grow by this factor since the last event"
    )
    cooldown: Duration = Field(default=timedelta(minutes=30), description="after a resolve, before a new episode")
    window: Duration = Field(default=timedelta(minutes=1))
    default_severity: Severity = "minor"
    max_samples: int = Field(default=5, ge=0)
    config_version: str | None = None
    # Kibana Discover link: base URL of Kibana, the mentions data view id, and the fields to filter on.
    kibana_url: str | None = None
    kibana_data_view: str | None = "earful-mentions"  # the id of the data view deploy/kibana ships
    kibana_topic_field: str = "tags"
    kibana_source_field: str = "source"
    kibana_lookback: Duration = Field(default=timedelta(minutes=30))


def alert_id(topic: str, source: str | None, opened_window: datetime) -> str:
    """Stable per episode: the Elasticsearch alert document is updated, not duplicated."""
    key = f"{topic}\x1f{source or ''}\x1f{opened_window.isoformat()}"
    return hashlib.sha1(key.encode()).hexdigest()[:24]


def _rison_string(value: str) -> str:
    # Kibana's URL state is Rison: strings in single quotes, ' and ! escaped with !.
    return "'" + value.replace("!", "!!").replace("'", "!'") + "'"


def _kql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kibana_discover_url(
    cfg: LifecycleConfig, topic: str, source: str | None, start: datetime, end: datetime
) -> str | None:
    """A Discover URL showing the topic's mentions (and source's, if any) over the episode."""
    if not cfg.kibana_url:
        return None
    kql = f"{cfg.kibana_topic_field}:{_kql_string(topic)}"
    if source:
        kql += f" and {cfg.kibana_source_field}:{_kql_string(source)}"
    frm = (start - cfg.kibana_lookback).isoformat().replace("+00:00", "Z")
    to = end.isoformat().replace("+00:00", "Z")
    g = f"(time:(from:{_rison_string(frm)},to:{_rison_string(to)}))"
    a_parts = []
    if cfg.kibana_data_view:
        a_parts.append(f"index:{_rison_string(cfg.kibana_data_view)}")
    a_parts.append(f"query:(language:kuery,query:{_rison_string(kql)})")
    a = "(" + ",".join(a_parts) + ")"
    safe = "(),:'!*"
    return f"{cfg.kibana_url.rstrip('/')}/app/discover#/?_g={quote(g, safe=safe)}&_a={quote(a, safe=safe)}"


def _key(topic: str, source: str | None) -> str:
    return f"{topic}\x1f{source or ''}"


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _higher(a: Severity, b: Severity) -> Severity:
    return a if _RANK[a] >= _RANK[b] else b


class AlertTracker:
    """Feeds windows through the lifecycle of every (topic, source) and says which alert to emit."""

    def __init__(self, cfg: LifecycleConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self._episodes: dict[str, dict[str, Any]] = {}
        if state:
            self._episodes = {k: dict(v) for k, v in state.get("episodes", {}).items()}

    @classmethod
    def from_state(cls, cfg: LifecycleConfig, state: dict[str, Any] | None) -> AlertTracker:
        return cls(cfg, state)

    def state(self) -> dict[str, Any]:
        """JSON-serialisable; ``from_state`` of it resumes exactly where this tracker is."""
        return {"version": STATE_VERSION, "episodes": {k: dict(v) for k, v in self._episodes.items()}}

    def open_alert_ids(self) -> list[str]:
        return [ep["alert_id"] for ep in self._episodes.values() if ep["phase"] == "open"]

    def step(
        self,
        *,
        topic: str,
        source: str | None,
        window_start: datetime,
        observed: float,
        expected: float,
        score: float,
        is_anomalous: bool,
        severity: str | None,
        samples: list[AlertSample],
        top_terms: list[str],
        now: datetime,
        authors: int | None = None,
        calm_below: float = 0.0,
    ) -> Alert | None:
        key = _key(topic, source)
        ep = self._episodes.get(key)
        last_seen = _dt(ep.get("last_window")) if ep else None
        if last_seen is not None and window_start <= last_seen:
            return None  # a replayed or redelivered window: already accounted for
        sev: Severity = severity if severity in _RANK else self.cfg.default_severity  # type: ignore[assignment]

        if ep is None or ep["phase"] == "resolved":
            if ep is not None:
                ep["last_window"] = window_start.isoformat()
                cooldown_until = _dt(ep["cooldown_until"])
                if cooldown_until is not None and window_start < cooldown_until:
                    if not is_anomalous:
                        return None
                    ep["phase"], ep["cooldown_until"], ep["calm"] = "open", None, 0
                    ep["reopens"] = ep.get("reopens", 0) + 1
                    ep["severity"] = _higher(sev, ep["severity"])  # as told before, or worse
                    ep["notified_observed"] = observed
                    self._record(ep, observed, expected, score, samples, top_terms, authors)
                    return self._emit(ep, topic, source, "open", window_start, now)
            if not is_anomalous:
                if ep is not None:
                    del self._episodes[key]  # cooldown over and quiet: nothing left to remember
                return None
            return self._open(key, topic, source, window_start, observed, expected, score, sev,
                              samples, top_terms, now, authors)

        ep["last_window"] = window_start.isoformat()
        self._record(ep, observed, expected, score, samples, top_terms, authors)

        # Under the count floor is calm only if the detector agrees: its tests over the last half
        # hour and the last hours can still flag a run of small windows.
        if observed <= expected * self.cfg.calm_factor or (observed < calm_below and not is_anomalous):
            ep["calm"] += 1
            if ep["calm"] >= self.cfg.calm_windows * 2 ** min(ep.get("reopens", 0), MAX_DOUBLINGS):
                return self._resolve(ep, topic, source, window_start, now)
            return None

        ep["calm"] = 0  # hysteresis: a busy window restarts the count of calm ones
        if not is_anomalous:
            return None
        rises = _RANK[sev] > _RANK[ep["severity"]]
        grows = observed >= ep["notified_observed"] * self.cfg.update_factor
        if not (rises or grows):
            return None
        ep["severity"] = _higher(sev, ep["severity"])
        ep["notified_observed"] = observed
        return self._emit(ep, topic, source, "update", window_start, now)

    def _record(
        self, ep: dict[str, Any], observed: float, expected: float, score: float,
        samples: list[AlertSample], top_terms: list[str], authors: int | None,
    ) -> None:
        """The latest window's figures and evidence on an open episode."""
        ep["peak_observed"] = max(ep["peak_observed"], observed)
        ep["observed"], ep["expected"], ep["score"] = observed, expected, score
        ep["authors"] = authors
        if samples:
            ep["samples"] = [s.model_dump(mode="json") for s in samples[: self.cfg.max_samples]]
        if top_terms:
            ep["top_terms"] = list(top_terms)

    def _open(
        self,
        key: str,
        topic: str,
        source: str | None,
        window_start: datetime,
        observed: float,
        expected: float,
        score: float,
        sev: Severity,
        samples: list[AlertSample],
        top_terms: list[str],
        now: datetime,
        authors: int | None = None,
    ) -> Alert:
        ep: dict[str, Any] = {
            "phase": "open",
            "alert_id": alert_id(topic, source, window_start),
            "opened_at": now.isoformat(),
            "opened_window": window_start.isoformat(),
            "last_window": window_start.isoformat(),
            "sequence": -1,
            "severity": sev,
            "observed": observed,
            "expected": expected,
            "score": score,
            "notified_observed": observed,
            "peak_observed": observed,
            "authors": authors,
            "calm": 0,
            "samples": [s.model_dump(mode="json") for s in samples[: self.cfg.max_samples]],
            "top_terms": list(top_terms),
            "cooldown_until": None,
        }
        self._episodes[key] = ep
        return self._emit(ep, topic, source, "open", window_start, now)

    def _resolve(
        self, ep: dict[str, Any], topic: str, source: str | None, window_start: datetime, now: datetime
    ) -> Alert:
        ep["phase"] = "resolved"
        ep["cooldown_until"] = (window_start + self.cfg.window + self.cfg.cooldown).isoformat()
        return self._emit(ep, topic, source, "resolved", window_start, now)

    def _emit(
        self, ep: dict[str, Any], topic: str, source: str | None, status: str, window_start: datetime,
        now: datetime,
    ) -> Alert:
        ep["sequence"] += 1
        opened_window = datetime.fromisoformat(ep["opened_window"])
        return Alert(
            id=ep["alert_id"],
            topic=topic,
            source=source,
            status=status,  # type: ignore[arg-type]
            severity=ep["severity"],
            opened_at=datetime.fromisoformat(ep["opened_at"]),
            updated_at=now,
            resolved_at=now if status == "resolved" else None,
            window_start=window_start,
            observed=ep["observed"],
            expected=ep["expected"],
            score=min(max(ep["score"], 0.0), 1.0),
            peak_observed=ep["peak_observed"],
            authors=ep.get("authors"),
            top_terms=ep["top_terms"],
            samples=[AlertSample.model_validate(s) for s in ep["samples"]],
            config_version=self.cfg.config_version,
            kibana_url=kibana_discover_url(
                self.cfg, topic, source, opened_window, window_start + self.cfg.window
            ),
            sequence=ep["sequence"],
        )

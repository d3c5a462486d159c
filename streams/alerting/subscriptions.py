"""Subscriptions: who hears about which topics, at which severity, through which channel.

YAML, either a list or a mapping with a ``subscriptions`` list (the ``subscriptions`` key of
deploy/earful.yaml)::

    - name: ops-oncall
      topics: [outage, login_identity]     # omitted or empty: every topic
      sources: []                          # omitted or empty: topic-wide alerts only (see below)
      min_severity: major
      cooldown: 15m                        # per subscription and topic
      quiet_hours: {start: "22:00", end: "07:00", timezone: Australia/Sydney}
      digest: 1h                           # optional: one message per period
      channel:
        type: webhook                      # webhook | slack | teams | email | pagerduty
        url: ${OPS_WEBHOOK_URL}
        secret: ${file:/run/secrets/ops_webhook_secret}

The detector tracks each topic overall and per source, so one spike can raise both a topic-wide
alert and per-source alerts. Without ``sources`` a subscription gets the topic-wide alert only
(one message per spike); ``sources: [reddit]`` gets that source's alerts; ``["*"]`` gets all.

Rules the dispatcher applies (see delivery.py):

- Quiet hours: only critical alerts go through; everything else is held and sent when the quiet
  hours end (the latest event of each alert, so a night's worth of updates is one message).
  Times are local wall-clock times, "HH:MM" (an unquoted 22:00, which YAML reads as the number
  1320, is read back as 22:00).
- Cooldown: after a message about a topic, further open/update events of that topic are held
  until the cooldown ends; critical alerts are not held back, and neither is the return of an
  alert the subscriber was told of (a spike back soon after its all clear).
- All clear: a resolve goes at once to a subscriber whose latest message of its alert said it
  was open, whatever the quiet hours or cooldown. To one who was not told of the alert, it goes
  with the alert's held events (replacing them, as the latest event); with no such events, or
  when their latest message was already the all clear, it is not sent: there is nothing to clear.
- Digest: events are collected and sent as one message per period, on period boundaries; a
  period that ends in quiet hours goes out when they end (critical alerts do not wait).
  Boundaries follow the local clock of ``quiet_hours.timezone`` (UTC without quiet hours): a
  ``1d`` digest ends at local midnight.
- Changes apply to what is already waiting: a held or pending delivery that comes due is checked
  against the subscription as it is then, and recorded as cancelled if it is no longer wanted.

Secrets: any string may be ``${ENV_NAME}`` (an environment variable) or ``${file:/path}`` (a
secret file, trailing newline dropped). Webhook URLs must be http(s). They are kept as
``SecretStr`` and only ever shown through ``redact_url`` (scheme and host), including in the
errors this module raises.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.records import Alert, Severity
from streams.redaction import redact_url

__all__ = [
    "Channel",
    "EmailChannel",
    "PagerDutyChannel",
    "QuietHours",
    "SlackChannel",
    "Subscription",
    "SubscriptionError",
    "TeamsChannel",
    "WebhookChannel",
    "load_subscriptions",
    "parse_subscriptions",
    "redact_url",
]

_RANK = {"info": 0, "minor": 1, "major": 2, "critical": 3}
_REF = re.compile(r"\$\{([^}]+)\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class SubscriptionError(ValueError):
    """The subscriptions file is wrong; the message says where, and never shows a secret."""



def _duration(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError("expected a duration like 30s, 15m, 1h or 1d")
        return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _http_url(value: SecretStr) -> SecretStr:
    scheme = urlsplit(value.get_secret_value()).scheme.lower()
    if scheme not in ("http", "https"):
        # Say what is wrong without echoing the URL: it is a credential.
        raise ValueError(f"must be an http(s) URL, got scheme {scheme or '(none)'!r}")
    if not urlsplit(value.get_secret_value()).hostname:
        raise ValueError("must be an http(s) URL with a host")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WebhookChannel(_Model):
    type: Literal["webhook"]
    url: SecretStr
    # Required: the receiver checks X-Earful-Signature with it, so a forged alert is refused.
    secret: SecretStr = Field(min_length=1, description="HMAC-SHA256 key for the signature header")
    timeout: float = Field(default=10.0, gt=0)
    _check_url = field_validator("url")(_http_url)


class SlackChannel(_Model):
    type: Literal["slack"]
    url: SecretStr
    timeout: float = Field(default=10.0, gt=0)
    _check_url = field_validator("url")(_http_url)


class TeamsChannel(_Model):
    type: Literal["teams"]
    url: SecretStr
    timeout: float = Field(default=10.0, gt=0)
    _check_url = field_validator("url")(_http_url)


class PagerDutyChannel(_Model):
    type: Literal["pagerduty"]
    routing_key: SecretStr
    url: SecretStr = SecretStr("https://events.pagerduty.com/v2/enqueue")
    timeout: float = Field(default=10.0, gt=0)
    _check_url = field_validator("url")(_http_url)


class EmailChannel(_Model):
    type: Literal["email"]
    host: str
    port: int = Field(default=587, gt=0, lt=65536)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    timeout: float = Field(default=20.0, gt=0)
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


Channel = Annotated[
    WebhookChannel | SlackChannel | TeamsChannel | PagerDutyChannel | EmailChannel,
    Field(discriminator="type"),
]


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _wall_time(value: Any) -> Any:
    """A local wall-clock time, from a quoted "HH:MM" (or a naive ``time`` built in code)."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ValueError("must be a local time without a time zone: set quiet_hours.timezone instead")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 22:00 as the base-60 number 1320: read it back as meant.
        if 0 <= value < 24 * 60:
            return time(*divmod(value, 60))
        raise ValueError(f'got the number {value}: quote the time, e.g. "22:00"')
    if not isinstance(value, str):
        raise ValueError(f'expected a quoted time "HH:MM", got {type(value).__name__}')
    match = _CLOCK.match(value.strip())
    if match is None:
        raise ValueError(f'expected a local time "HH:MM" (24-hour, no time zone: quiet_hours.timezone '
                         f"sets it), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


WallTime = Annotated[time, BeforeValidator(_wall_time)]


class QuietHours(_Model):
    start: WallTime
    end: WallTime
    timezone: str = "Australia/Sydney"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end are equal: quiet hours would be empty")
        return self

    def _local(self, now: datetime) -> datetime:
        return now.astimezone(ZoneInfo(self.timezone))

    def is_quiet(self, now: datetime) -> bool:
        t = self._local(now).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # spans midnight

    def ends_after(self, now: datetime) -> datetime:
        """When the quiet hours around ``now`` end, in UTC: the first instant after ``now`` at
        which the local clock reads ``end``. When the clocks go back it may read it twice: from
        the second pass through the repeated hour, the end is its second reading. When they go
        forward past ``end``, the quiet hours end as the clock jumps over it."""
        day = self._local(now).date()
        walls = [datetime.combine(day + timedelta(days=d), self.end) for d in (-1, 0, 1)]
        return _next_reading(ZoneInfo(self.timezone), now, walls)


class Subscription(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    channel: Channel
    topics: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    min_severity: Severity = "minor"
    cooldown: Duration = timedelta(0)
    quiet_hours: QuietHours | None = None
    digest: Duration | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _digest_fits_channel(self) -> Subscription:
        if self.digest is not None:
            if self.channel.type == "pagerduty":
                raise ValueError("digest does not apply to pagerduty: incidents are per alert")
            if self.digest < timedelta(minutes=1):
                raise ValueError("digest period must be at least 1m")
        return self

    def matches(self, alert: Alert) -> bool:
        """Topic, source and severity say this subscriber wants the event."""
        return self.refusal(alert) is None

    def refusal(self, alert: Alert, *, told: bool = False) -> str | None:
        """Why this subscriber does not want the event, or None if it does.

        ``told``: it was sent an earlier event of the alert, so the alert's all clear is wanted
        whatever its severity (e.g. ``min_severity`` was raised since). A disabled subscription,
        or one whose topics or sources no longer cover the alert, wants nothing of it."""
        if not self.enabled:
            return f"subscription {self.name} is disabled"
        if self.topics and "*" not in self.topics and alert.topic not in self.topics:
            return f"subscription {self.name} does not cover topic {alert.topic!r}"
        if not self.sources:
            if alert.source is not None:
                return f"subscription {self.name} takes topic-wide alerts only, not source {alert.source!r}"
        elif "*" not in self.sources and alert.source not in self.sources:
            return f"subscription {self.name} does not cover source {alert.source!r}"
        if _RANK[alert.severity] < _RANK[self.min_severity] and not (told and alert.status == "resolved"):
            return f"severity {alert.severity} is below the min_severity {self.min_severity} of subscription {self.name}"
        return None

    def quiet_until(self, now: datetime) -> datetime | None:
        """When this subscriber's quiet hours end, if ``now`` is in them."""
        if self.quiet_hours is None or not self.quiet_hours.is_quiet(now):
            return None
        return self.quiet_hours.ends_after(now)

    @property
    def zone(self) -> tzinfo:
        """The subscriber's time zone: that of its quiet hours, else UTC."""
        return ZoneInfo(self.quiet_hours.timezone) if self.quiet_hours is not None else UTC

    def digest_due(self, now: datetime) -> datetime:
        """The end of the digest period ``now`` falls in, in UTC.

        Periods are aligned on the subscriber's local wall clock (see ``zone``), counted from
        1970-01-01 00:00 local time: a ``1d`` digest ends at local midnight, a ``1h`` one on the
        local hour (the UTC hour, in a zone a whole number of hours from UTC). Across a DST change
        the boundary is the first instant after ``now`` at which the local clock reads (or jumps
        over) one, so a day is 23 or 25 hours long and an hourly digest still goes out hourly."""
        assert self.digest is not None
        zone, period = self.zone, self.digest
        local = now.astimezone(zone)
        wall = local.replace(tzinfo=None)
        start = _WALL_EPOCH + (wall - _WALL_EPOCH) // period * period  # of the period we are in
        walls = [start + period, start + 2 * period]
        # In the first pass through an hour the clocks go back on, the boundaries of that hour
        # up to now come round again: the next may be one of them.
        repeat = (local.utcoffset() or timedelta(0)) - (local.replace(fold=1).utcoffset() or timedelta(0))
        if local.fold == 0 and repeat > timedelta(0):
            boundary = start
            while boundary > wall - repeat:
                walls.append(boundary)
                boundary -= period
        return _next_reading(zone, now, walls)


_WALL_EPOCH = datetime(1970, 1, 1)


def _readings(zone: tzinfo, wall: datetime) -> list[datetime]:
    """The instants (UTC) at which the local clock in ``zone`` reads ``wall`` (naive): one; two
    when the clocks go back over it; none when they go forward over it, and then the instant
    they jump over it is given instead."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return sorted((first, second))  # the clocks go back: it is read twice
    # Skipped. ``second`` (offset after the change) is before the jump and reads earlier than
    # ``wall``; ``first`` (offset before it) is after the jump. The jump is between the two.
    before, after = min(first, second), max(first, second)
    while after - before > timedelta(microseconds=1):
        middle = before + (after - before) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            after = middle
        else:
            before = middle
    return [after]


def _next_reading(zone: tzinfo, now: datetime, walls: list[datetime]) -> datetime:
    """The first instant after ``now`` at which the local clock reads (or jumps over) one of
    ``walls``, in UTC."""
    return min(instant for wall in walls for instant in _readings(zone, wall) if instant > now)


def _resolve_refs(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_refs(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def expand(match: re.Match[str]) -> str:
        ref = match.group(1).strip()
        if ref.startswith("file:"):
            path = Path(ref[5:])
            try:
                found = path.read_text().rstrip("\r\n")
            except OSError as exc:
                raise SubscriptionError(f"{where}: cannot read secret file {path}: {exc.strerror}") from None
            if not found.strip():
                raise SubscriptionError(f"{where}: secret file {path} is empty")
            return found
        if ref not in os.environ:
            raise SubscriptionError(f"{where}: environment variable {ref} is not set")
        if not os.environ[ref].strip():  # docker compose passes ${NAME:-} as "" when it is unset
            raise SubscriptionError(f"{where}: environment variable {ref} is empty")
        return os.environ[ref]

    return _REF.sub(expand, value)


def _describe(exc: ValidationError, index: int, name: Any) -> str:
    # Built from loc and msg only: pydantic's own text repeats the input, which may be a secret.
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        lines.append(f"  {loc or '(subscription)'}: {err['msg']}")
    label = f"subscription {name!r}" if isinstance(name, str) else f"subscription #{index}"
    return f"{label}:\n" + "\n".join(lines)


def parse_subscriptions(data: Any) -> list[Subscription]:
    """Validate loaded YAML (a list, or a mapping with ``subscriptions``) into subscriptions.

    Given the whole config, a subscription that names ``sources`` while ``alerting.per_source``
    is off is refused: only per-source alerts carry a source, so it would never hear of one.
    """
    per_source: bool | None = None
    if isinstance(data, dict):
        alerting = data.get("alerting")
        per_source = bool(alerting.get("per_source", False)) if isinstance(alerting, dict) else False
        data = data.get("subscriptions", [])
    if data is None:
        return []
    if not isinstance(data, list):
        raise SubscriptionError("subscriptions: expected a list")
    subs: list[Subscription] = []
    problems: list[str] = []
    for i, raw in enumerate(data):
        name = raw.get("name") if isinstance(raw, dict) else None
        try:
            resolved = _resolve_refs(raw, f"subscription {name or i!r}")
            subs.append(Subscription.model_validate(resolved))
        except ValidationError as exc:
            problems.append(_describe(exc, i, name))
        except SubscriptionError as exc:
            problems.append(str(exc))
    seen: set[str] = set()
    for sub in subs:
        if sub.name in seen:
            problems.append(f"subscription {sub.name!r}: the name is used twice")
        seen.add(sub.name)
        if sub.sources and "*" not in sub.sources and per_source is False:
            problems.append(f"subscription {sub.name!r}: it names sources, but alerting.per_source is off, "
                            "so no alert carries a source: set per_source: true, or drop sources")
    if problems:
        raise SubscriptionError("invalid subscriptions:\n" + "\n".join(problems))
    return subs


def load_subscriptions(path: Path) -> list[Subscription]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SubscriptionError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SubscriptionError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_subscriptions(data)
    except SubscriptionError as exc:
        raise SubscriptionError(f"{path}: {exc}") from None

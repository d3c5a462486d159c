"""Delivery: from an alert event to every subscriber who asked for it, once, never lost.

For each matching subscription an alert event becomes one delivery record, id = idempotency key
``<alert id>:<sequence>:<subscription>``. A redelivered alert event finds its record and is not
sent again; the receiver gets the same key on every retry (webhook ``Idempotency-Key``, e-mail
Message-ID) to drop the rare repeat after a crash between sending and logging.

A record's status::

    held        waiting for quiet hours, a cooldown or a digest period to end (next_attempt_at)
    pending     claimed for sending, or failed with a retriable error: retried by retry_due()
    sent        delivered
    superseded  a later event of the same alert went out first (e.g. a night's updates
                collapsed into the morning's one message)
    failed      a permanent error, or still failing after ``give_up_after``: logged at ERROR
                and kept in the log for the ops team, never silently dropped

Records live in a ``DeliveryLog``: Elasticsearch in the worker (``index_deliveries``), a dict in
unit tests. Held and pending records carry the alert, so a restarted worker still sends them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import httpx
from elasticsearch import AsyncElasticsearch, NotFoundError
from pydantic import BaseModel, ConfigDict

from schemas.records import Alert, utcnow
from streams.alerting.notifiers import Notifier, build_notifier
from streams.alerting.notifiers.errors import PermanentDeliveryError, RetriableDeliveryError
from streams.alerting.subscriptions import Subscription

__all__ = [
    "DeliveryLog",
    "DeliveryRecord",
    "Dispatcher",
    "ElasticsearchDeliveryLog",
    "InMemoryDeliveryLog",
    "RetryPolicy",
    "idempotency_key",
]

log = logging.getLogger(__name__)

DeliveryStatus = Literal["held", "pending", "sent", "superseded", "failed"]


def idempotency_key(alert: Alert, subscription: str) -> str:
    return f"{alert.id}:{alert.sequence}:{subscription}"


class DeliveryRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    alert_id: str
    event_key: str
    idempotency_key: str
    subscription: str
    channel: str
    topic: str
    source: str | None = None
    severity: str
    alert_status: str
    sequence: int
    status: DeliveryStatus
    reason: str | None = None
    attempts: int = 0
    error: str | None = None
    created_at: datetime
    at: datetime
    next_attempt_at: datetime | None = None
    alert: dict[str, Any]

    @classmethod
    def new(cls, alert: Alert, sub: Subscription, now: datetime) -> DeliveryRecord:
        key = idempotency_key(alert, sub.name)
        return cls(
            id=key, alert_id=alert.id, event_key=f"{alert.id}:{alert.sequence}", idempotency_key=key,
            subscription=sub.name, channel=sub.channel.type, topic=alert.topic, source=alert.source,
            severity=alert.severity, alert_status=alert.status, sequence=alert.sequence,
            status="pending", created_at=now, at=now, alert=alert.model_dump(mode="json"),
        )

    def to_alert(self) -> Alert:
        return Alert.model_validate(self.alert)

    def but(self, **changes: Any) -> DeliveryRecord:
        return self.model_copy(update=changes)


class DeliveryLog(Protocol):
    async def get(self, record_id: str) -> DeliveryRecord | None: ...
    async def put(self, record: DeliveryRecord) -> None: ...
    async def due(self, now: datetime, limit: int = 500) -> list[DeliveryRecord]: ...
    async def last_sent(self, subscription: str, topic: str) -> datetime | None: ...
    async def latest_sent_sequence(self, subscription: str, alert_id: str) -> int | None: ...


class InMemoryDeliveryLog:
    def __init__(self) -> None:
        self.records: dict[str, DeliveryRecord] = {}

    async def get(self, record_id: str) -> DeliveryRecord | None:
        return self.records.get(record_id)

    async def put(self, record: DeliveryRecord) -> None:
        self.records[record.id] = record

    async def due(self, now: datetime, limit: int = 500) -> list[DeliveryRecord]:
        due = [r for r in self.records.values()
               if r.status in ("held", "pending") and r.next_attempt_at is not None and r.next_attempt_at <= now]
        return sorted(due, key=lambda r: r.next_attempt_at or now)[:limit]

    async def last_sent(self, subscription: str, topic: str) -> datetime | None:
        times = [r.at for r in self.records.values()
                 if r.subscription == subscription and r.topic == topic and r.status == "sent"]
        return max(times, default=None)

    async def latest_sent_sequence(self, subscription: str, alert_id: str) -> int | None:
        seqs = [r.sequence for r in self.records.values()
                if r.subscription == subscription and r.alert_id == alert_id and r.status == "sent"]
        return max(seqs, default=None)


class ElasticsearchDeliveryLog:
    """The delivery log in Elasticsearch. Writes refresh, so ``due`` sees them at once: there are
    a handful of deliveries per alert, and a held record must not be missed by the next pass."""

    def __init__(self, client: AsyncElasticsearch, index: str) -> None:
        self.client = client
        self.index = index

    async def get(self, record_id: str) -> DeliveryRecord | None:
        try:
            found = await self.client.get(index=self.index, id=record_id)
        except NotFoundError:
            return None
        return DeliveryRecord.model_validate(found["_source"])

    async def put(self, record: DeliveryRecord) -> None:
        await self.client.index(
            index=self.index, id=record.id, document=record.model_dump(mode="json"), refresh=True
        )

    async def _search(self, filters: list[dict[str, Any]], sort: list[dict[str, Any]], size: int) -> list[DeliveryRecord]:
        try:
            found = await self.client.search(
                index=self.index, query={"bool": {"filter": filters}}, sort=sort, size=size
            )
        except NotFoundError:
            return []  # no delivery yet: the index is created by the first write
        return [DeliveryRecord.model_validate(hit["_source"]) for hit in found["hits"]["hits"]]

    async def due(self, now: datetime, limit: int = 500) -> list[DeliveryRecord]:
        return await self._search(
            [{"terms": {"status": ["held", "pending"]}},
             {"range": {"next_attempt_at": {"lte": now.isoformat()}}}],
            [{"next_attempt_at": {"order": "asc"}}], limit,
        )

    async def last_sent(self, subscription: str, topic: str) -> datetime | None:
        hits = await self._search(
            [{"term": {"subscription": subscription}}, {"term": {"topic": topic}}, {"term": {"status": "sent"}}],
            [{"at": {"order": "desc"}}], 1,
        )
        return hits[0].at if hits else None

    async def latest_sent_sequence(self, subscription: str, alert_id: str) -> int | None:
        hits = await self._search(
            [{"term": {"subscription": subscription}}, {"term": {"alert_id": alert_id}},
             {"term": {"status": "sent"}}],
            [{"sequence": {"order": "desc"}}], 1,
        )
        return hits[0].sequence if hits else None


@dataclass(frozen=True)
class RetryPolicy:
    inline_attempts: int = 3          # tries before a delivery is left to retry_due()
    inline_backoff: float = 1.0       # seconds before the 2nd in-line try, doubled after
    max_inline_wait: float = 10.0     # a long Retry-After is honoured by retry_due, not in line
    retry_backoff: timedelta = timedelta(minutes=1)   # doubled per attempt...
    max_retry_backoff: timedelta = timedelta(hours=1)  # ...up to this
    give_up_after: timedelta = timedelta(hours=24)
    lease: timedelta = timedelta(minutes=5)  # a claimed delivery a crashed worker left behind is retried after this

    def later(self, attempts: int, retry_after: float | None) -> timedelta:
        backoff = min(self.retry_backoff * 2 ** max(attempts - 1, 0), self.max_retry_backoff)
        return max(backoff, timedelta(seconds=retry_after or 0))


@dataclass
class _Outcome:
    ok: bool
    permanent: bool = False
    error: str | None = None
    retry_after: float | None = None
    attempts: int = 0


class Dispatcher:
    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        delivery_log: DeliveryLog,
        *,
        notifiers: Mapping[str, Notifier] | None = None,
        client: httpx.AsyncClient | None = None,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.subscriptions = {s.name: s for s in subscriptions}
        self.log = delivery_log
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.sleep = sleep
        self._notifiers: dict[str, Notifier] = dict(notifiers or {})
        self._own_client = client is None
        self._client = client

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()

    def notifier(self, sub: Subscription) -> Notifier:
        if sub.name not in self._notifiers:
            if self._client is None:
                self._client = httpx.AsyncClient()
            self._notifiers[sub.name] = build_notifier(sub.channel, self._client)
        return self._notifiers[sub.name]

    async def dispatch(self, alert: Alert) -> list[DeliveryRecord]:
        """Deliver (or hold) one alert event for every subscription that wants it."""
        results = []
        for sub in self.subscriptions.values():
            if not sub.matches(alert):
                continue
            if await self.log.get(idempotency_key(alert, sub.name)) is not None:
                continue  # this event already reached (or is queued for) this subscriber
            now = self.clock()
            record = DeliveryRecord.new(alert, sub, now)
            hold = await self._hold(sub, alert, now)
            if hold is not None:
                reason, until = hold
                record = record.but(status="held", reason=reason, next_attempt_at=until)
                await self.log.put(record)
                log.info("holding alert %s #%d for %s (%s) until %s",
                         alert.id, alert.sequence, sub.name, reason, until.isoformat())
                results.append(record)
                continue
            results.extend(await self._deliver(sub, [record], self.policy.inline_attempts))
        return results

    async def _hold(self, sub: Subscription, alert: Alert, now: datetime) -> tuple[str, datetime] | None:
        if sub.digest is not None:
            return "digest", sub.digest_due(now)
        if alert.severity == "critical":
            return None  # critical goes through quiet hours and cooldowns
        if sub.quiet_hours is not None and sub.quiet_hours.is_quiet(now):
            return "quiet_hours", sub.quiet_hours.ends_after(now)
        if sub.cooldown and alert.status != "resolved":
            last = await self.log.last_sent(sub.name, alert.topic)
            if last is not None and now < last + sub.cooldown:
                return "cooldown", last + sub.cooldown
        return None

    async def retry_due(self, now: datetime | None = None) -> list[DeliveryRecord]:
        """Send what has come due: held deliveries whose wait is over, and pending retries."""
        now = now or self.clock()
        groups: dict[tuple[str, str], list[DeliveryRecord]] = defaultdict(list)
        for record in await self.log.due(now):
            group = "digest" if record.reason == "digest" else record.alert_id
            groups[(record.subscription, group)].append(record)
        results: list[DeliveryRecord] = []
        for (name, group), records in groups.items():
            sub = self.subscriptions.get(name)
            if sub is None:
                for record in records:
                    failed = record.but(status="failed", error="subscription no longer configured", at=now,
                                        next_attempt_at=None)
                    log.error("delivery %s failed: subscription %s is no longer configured", record.id, name)
                    await self.log.put(failed)
                    results.append(failed)
                continue
            latest = await self._collapse(records, now, results)
            if group == "digest":
                results.extend(await self._deliver(sub, latest, min(self._tries(r) for r in latest)))
                continue
            (record,) = latest
            sent_seq = await self.log.latest_sent_sequence(sub.name, record.alert_id)
            if sent_seq is not None and sent_seq > record.sequence:
                await self._supersede(record, sent_seq, now, results)
                continue
            results.extend(await self._deliver(sub, [record], self._tries(record)))
        return results

    def _tries(self, record: DeliveryRecord) -> int:
        # Released from hold it is a first send; a retry of a failed one gets a single try per pass.
        return self.policy.inline_attempts if record.attempts == 0 else 1

    async def _collapse(
        self, records: list[DeliveryRecord], now: datetime, results: list[DeliveryRecord]
    ) -> list[DeliveryRecord]:
        """The latest event of each alert; the earlier ones are superseded by it."""
        latest: dict[str, DeliveryRecord] = {}
        for record in sorted(records, key=lambda r: r.sequence):
            previous = latest.get(record.alert_id)
            if previous is not None:
                await self._supersede(previous, record.sequence, now, results)
            latest[record.alert_id] = record
        return list(latest.values())

    async def _supersede(self, record: DeliveryRecord, by: int, now: datetime, results: list[DeliveryRecord]) -> None:
        done = record.but(status="superseded", error=f"superseded by event #{by}", at=now, next_attempt_at=None)
        await self.log.put(done)
        results.append(done)

    async def _deliver(self, sub: Subscription, records: list[DeliveryRecord], tries: int) -> list[DeliveryRecord]:
        """Send one alert (or one digest of several) and record the outcome on every record."""
        now = self.clock()
        # Claim first: if the worker dies mid-send, retry_due picks this up after the lease.
        claimed = [r.but(status="pending", at=now, next_attempt_at=now + self.policy.lease) for r in records]
        for record in claimed:
            await self.log.put(record)
        notifier = self.notifier(sub)
        alerts = [r.to_alert() for r in claimed]
        if records[0].reason == "digest":
            key = "digest:" + sub.name + ":" + ",".join(sorted(r.id for r in claimed))
            outcome = await self._attempt(lambda: notifier.send_digest(alerts, key), tries)
        else:
            outcome = await self._attempt(lambda: notifier.send(alerts[0], claimed[0].idempotency_key), tries)
        return [await self._record(sub, r, outcome) for r in claimed]

    async def _attempt(self, send: Callable[[], Awaitable[None]], tries: int) -> _Outcome:
        outcome = _Outcome(ok=False)
        for i in range(tries):
            outcome.attempts += 1
            try:
                await send()
            except PermanentDeliveryError as exc:
                return _Outcome(ok=False, permanent=True, error=str(exc), attempts=outcome.attempts)
            except RetriableDeliveryError as exc:
                outcome.error, outcome.retry_after = str(exc), exc.retry_after
            except Exception as exc:  # a bug or an unforeseen library error: keep the delivery, retry later
                outcome.error, outcome.retry_after = f"{type(exc).__name__}: {exc}", None
            else:
                return _Outcome(ok=True, attempts=outcome.attempts)
            if i + 1 < tries:
                wait = outcome.retry_after if outcome.retry_after is not None else self.policy.inline_backoff * 2**i
                if wait > self.policy.max_inline_wait:
                    break  # the receiver asked for a long pause: leave it to retry_due
                await self.sleep(wait)
        return outcome

    async def _record(self, sub: Subscription, record: DeliveryRecord, outcome: _Outcome) -> DeliveryRecord:
        now = self.clock()
        attempts = record.attempts + outcome.attempts
        if outcome.ok:
            done = record.but(status="sent", attempts=attempts, error=None, at=now, next_attempt_at=None)
            log.info("delivered alert %s #%d to %s via %s", record.alert_id, record.sequence, sub.name, record.channel)
        elif outcome.permanent or now - record.created_at >= self.policy.give_up_after:
            error = outcome.error if outcome.permanent else f"gave up after {attempts} attempts: {outcome.error}"
            done = record.but(status="failed", attempts=attempts, error=error, at=now, next_attempt_at=None)
            log.error("delivery of alert %s #%d to %s failed: %s", record.alert_id, record.sequence, sub.name, error)
        else:
            when = now + self.policy.later(attempts, outcome.retry_after)
            done = record.but(status="pending", attempts=attempts, error=outcome.error, at=now, next_attempt_at=when)
            log.warning("delivery of alert %s #%d to %s will be retried at %s: %s",
                        record.alert_id, record.sequence, sub.name, when.isoformat(), outcome.error)
        await self.log.put(done)
        return done

    async def send_test(self, name: str, alert: Alert) -> tuple[bool, int, str | None]:
        """Send ``alert`` through one subscription now, ignoring its rules; nothing is logged."""
        sub = self.subscriptions[name]
        notifier = self.notifier(sub)
        key = f"test:{alert.id}:{alert.sequence}:{name}"
        outcome = await self._attempt(lambda: notifier.send(alert, key), self.policy.inline_attempts)
        return outcome.ok, outcome.attempts, outcome.error

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
                collapsed into the morning's one message), or an all clear with nothing to
                clear: its alert was never announced to this subscriber, or their last
                message of it was its all clear and they were not told it was back (the
                alert's waiting events it makes moot are superseded with it)
    failed      a permanent error, or still failing ``give_up_after`` after its first send
                attempt (time spent held does not count): logged at ERROR and kept in the log
                for the ops team, never silently dropped
    cancelled   not sent: when it came due the subscription no longer wanted it (it was
                disabled or removed from the config, or its topics, sources or min_severity
                changed since the event was held or first tried); ``error`` says why

A sent record's ``error`` notes a partial delivery (e.g. mail recipients the server refused).
An unexpected error while handling one subscription (a bug, a library surprise) is logged with
its traceback and recorded on that delivery as a retriable failure; the other subscriptions
are still served. Only an error that cannot be recorded at all (the log itself is down) is
raised, after every subscription had its turn.

An alert can reopen: a spike back soon after its all clear (within the lifecycle's cooldown) is
the same alert again (status "open", a later sequence). So what a subscriber was told of an
alert goes by the latest event of it they were sent (status sent): they believe it is open
unless that event is its all clear.

An all clear (a resolve) goes straight to a subscriber who believes its alert is open, whatever
the quiet hours, cooldown or its severity: an incident opened at 21:55 is closed when it is over,
not at 07:00. To one whose latest message of the alert was its all clear (the reopen is still
held for the night) it is not sent, and the reopen it makes moot is superseded with it: they
would get a second all clear for nothing. A subscriber who was sent none of its events gets it
the way the alert's waiting events go: held with them and released together, when it supersedes
them. It never goes out alone to someone who was not told of the alert. (A digest subscriber
gets the alert's latest event in the period's digest, all clear or not.)

A subscription's cooldown separates the alerts of a topic: after a message about the topic, its
other alerts' events, and the updates of an alert, wait until the cooldown has passed since
that message (critical ones do not wait). The reopen of an alert this subscriber was sent an
earlier event of ("Spike back in") is not held by it: it is the sequel of what they were told,
not a new episode of the topic.

Quiet hours apply to every send, not only the first: a retry of a failed delivery, or one
held for a cooldown, that comes due at night waits for the morning like a new alert would.
(That wait does not count toward ``give_up_after``: the record keeps the time it was held.)
A digest goes out at the end of its period, and one whose period ends in quiet hours (or whose
retry comes due in them) goes out when they end; critical alerts go through quiet hours.

Within one worker, one subscription's deliveries of one alert (or its digest) go out one at a
time: a retry of an older event still on its way and the alert's newer event never cross, so a
late "trigger" cannot reopen an incident after its "resolve". The worker runs the retry timer
where it dispatches, on the owner of the alerts topic's only partition, and a retry pass stops
when that partition moves away. (A send already on its way when a rebalance moves it may still
meet the new owner's first send: the lock does not reach across workers.)

The rules are those of the subscription as it is when a delivery goes out, not when it was held:
a held or pending delivery that comes due is checked against the current subscription first.
An all clear to a subscriber who believes its alert is open is still wanted if only its
severity no longer matches (``Subscription.refusal``), and is sent as it would be to any
matching subscriber; a disabled subscription, or one removed from the config, gets nothing.

Records live in a ``DeliveryLog``: Elasticsearch in the worker (``index_deliveries``), a dict in
unit tests. Held and pending records carry the alert, so a restarted worker still sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import httpx
from elasticsearch import AsyncElasticsearch, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from schemas.records import Alert, utcnow
from streams.alerting.notifiers import Notifier, build_notifier, max_try_seconds
from streams.alerting.notifiers.errors import PermanentDeliveryError, RetriableDeliveryError
from streams.alerting.subscriptions import Duration, Subscription

__all__ = [
    "DeliveryLog",
    "DeliveryRecord",
    "Dispatcher",
    "ElasticsearchDeliveryLog",
    "InMemoryDeliveryLog",
    "DeliverySettings",
    "RetryPolicy",
    "idempotency_key",
]

log = logging.getLogger(__name__)

DeliveryStatus = Literal["held", "pending", "sent", "superseded", "failed", "cancelled"]


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
    first_attempt_at: datetime | None = None  # the give-up clock starts here, not at created_at
    digest_key: str | None = None  # the idempotency key of the digest this record first went out in
    #: seconds held for quiet hours after the first try: they do not count toward give_up_after
    held_seconds: float = 0.0
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
    async def latest_sent(self, subscription: str, alert_id: str) -> DeliveryRecord | None: ...
    async def waiting(self, subscription: str, alert_id: str) -> list[DeliveryRecord]: ...


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

    async def latest_sent(self, subscription: str, alert_id: str) -> DeliveryRecord | None:
        sent = [r for r in self.records.values()
                if r.subscription == subscription and r.alert_id == alert_id and r.status == "sent"]
        return max(sent, key=lambda r: r.sequence, default=None)

    async def waiting(self, subscription: str, alert_id: str) -> list[DeliveryRecord]:
        return [r for r in self.records.values()
                if r.subscription == subscription and r.alert_id == alert_id and r.status in ("held", "pending")]


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

    async def latest_sent(self, subscription: str, alert_id: str) -> DeliveryRecord | None:
        hits = await self._search(
            [{"term": {"subscription": subscription}}, {"term": {"alert_id": alert_id}},
             {"term": {"status": "sent"}}],
            [{"sequence": {"order": "desc"}}], 1,
        )
        return hits[0] if hits else None

    async def waiting(self, subscription: str, alert_id: str) -> list[DeliveryRecord]:
        return await self._search(
            [{"term": {"subscription": subscription}}, {"term": {"alert_id": alert_id}},
             {"terms": {"status": ["held", "pending"]}}],
            [{"sequence": {"order": "asc"}}], 100,
        )


@dataclass(frozen=True)
class RetryPolicy:
    inline_attempts: int = 3          # tries before a delivery is left to retry_due()
    inline_backoff: float = 1.0       # seconds before the 2nd in-line try, doubled after
    max_inline_wait: float = 10.0     # a long Retry-After is honoured by retry_due, not in line
    retry_backoff: timedelta = timedelta(minutes=1)   # doubled per attempt...
    max_retry_backoff: timedelta = timedelta(hours=1)  # ...up to this
    give_up_after: timedelta = timedelta(hours=24)

    def later(self, attempts: int, retry_after: float | None) -> timedelta:
        backoff = min(self.retry_backoff * 2 ** max(attempts - 1, 0), self.max_retry_backoff)
        return max(backoff, timedelta(seconds=self.honoured(retry_after) or 0))

    def honoured(self, retry_after: float | None) -> float | None:
        """How much of a receiver's Retry-After we honour: nothing if it is not a number
        ("nan"), at least 0 and at most ``give_up_after`` (a receiver may ask for years)."""
        if retry_after is None or math.isnan(retry_after):
            return None
        return min(max(retry_after, 0.0), self.give_up_after.total_seconds())

    def lease_for(self, try_seconds: float, tries: int) -> timedelta:
        """How long a claimed send may take before the next pass takes it over (the worker that
        claimed it died): ``tries`` sends of at most ``try_seconds``, the waits between them, and
        a margin. A live worker's send is over by then, so it is never made twice at once."""
        return timedelta(seconds=tries * try_seconds + (tries - 1) * self.max_inline_wait + 30)

    def gives_up(self, record: DeliveryRecord, now: datetime) -> bool:
        """Whether a failing delivery has been tried for long enough. The clock starts at the
        first send attempt and stops while the delivery waits for quiet hours to end: waiting
        for quiet hours, a cooldown or a digest does not count."""
        tried_for = now - (record.first_attempt_at or record.created_at) - timedelta(seconds=record.held_seconds)
        return tried_for >= self.give_up_after


class DeliverySettings(BaseModel):
    """The ``alerting.delivery`` section of the config file: how failed deliveries are retried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inline_attempts: int = Field(default=3, ge=1, description="tries at once, before retrying later")
    retry_backoff: Duration = Field(default=timedelta(minutes=1), description="wait after the in-line tries, "
                                    "doubled per attempt")
    max_retry_backoff: Duration = Field(default=timedelta(hours=1))
    give_up_after: Duration = Field(default=timedelta(hours=24), description="from the first attempt: then "
                                    "the delivery is recorded as failed")
    retry_every: Duration = Field(default=timedelta(seconds=30), gt=timedelta(0),
                                  description="how often the worker sends what has come due")

    def policy(self) -> RetryPolicy:
        return RetryPolicy(inline_attempts=self.inline_attempts, retry_backoff=self.retry_backoff,
                           max_retry_backoff=self.max_retry_backoff, give_up_after=self.give_up_after)


@dataclass
class _Outcome:
    ok: bool
    permanent: bool = False
    error: str | None = None
    retry_after: float | None = None
    attempts: int = 0
    note: str | None = None  # sent, but not entirely (see Notifier)


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
        self._turns: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def _turn(self, subscription: str, group: str) -> AsyncIterator[None]:
        """One sender at a time per subscription and alert (or digest): a retry of an alert's
        older event and its newer event never go out at once, in either order."""
        lock = self._turns.get((subscription, group))
        if lock is None:
            lock = self._turns[(subscription, group)] = asyncio.Lock()
        async with lock:
            yield

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
        """Deliver (or hold) one alert event for every subscription that wants it.

        An unexpected error for one subscription is recorded on its delivery (pending, so
        retry_due tries again) and does not keep the event from the others."""
        results: list[DeliveryRecord] = []
        unrecorded: list[Exception] = []
        for sub in self.subscriptions.values():
            try:
                if await self._refusal(sub, alert) is not None:
                    continue
                async with self._turn(sub.name, "digest" if sub.digest is not None else alert.id):
                    results.extend(await self._dispatch_to(sub, alert))
            except Exception as exc:
                log.exception("delivering alert %s #%d to %s failed unexpectedly", alert.id, alert.sequence, sub.name)
                record = DeliveryRecord.new(alert, sub, self.clock())
                results.extend(await self._keep_after_crash([record], exc, unrecorded))
        _raise_first(unrecorded)
        return results

    async def _refusal(self, sub: Subscription, alert: Alert) -> str | None:
        """Why ``sub`` does not want ``alert`` now, or None: its rules, with the all clear of an
        alert it was last told is open wanted whatever its severity."""
        why = sub.refusal(alert)
        if (why is not None and alert.status == "resolved" and sub.refusal(alert, told=True) is None
                and _believes_open(await self.log.latest_sent(sub.name, alert.id))):
            return None
        return why

    async def _drop_unwanted(self, sub: Subscription, records: list[DeliveryRecord], now: datetime,
                             results: list[DeliveryRecord]) -> list[DeliveryRecord]:
        """The records ``sub`` still wants as it is configured now; the others are recorded as
        cancelled, with the reason (e.g. held overnight, and the subscription was disabled)."""
        wanted = []
        for record in records:
            why = await self._refusal(sub, record.to_alert())
            if why is None:
                wanted.append(record)
            else:
                results.append(await self._cancel(record, why, now))
        return wanted

    async def _cancel(self, record: DeliveryRecord, why: str, now: datetime) -> DeliveryRecord:
        """Record ``record`` as cancelled, not sent, with the reason."""
        done = record.but(status="cancelled", error=f"not sent: {why}", at=now, next_attempt_at=None)
        await self.log.put(done)
        log.info("not sending alert %s #%d to %s: %s", record.alert_id, record.sequence, record.subscription, why)
        return done

    async def _dispatch_to(self, sub: Subscription, alert: Alert) -> list[DeliveryRecord]:
        if await self.log.get(idempotency_key(alert, sub.name)) is not None:
            return []  # this event already reached (or is queued for) this subscriber
        now = self.clock()
        record = DeliveryRecord.new(alert, sub, now)
        if alert.status == "resolved" and sub.digest is None:
            return await self._all_clear(sub, record)
        hold = await self._hold(sub, alert, now)
        if hold is None:
            return await self._deliver(sub, [record], self.policy.inline_attempts)
        return [await self._put_held(record, *hold)]

    async def _all_clear(self, sub: Subscription, record: DeliveryRecord) -> list[DeliveryRecord]:
        """A resolve: at once to a subscriber who was last told the alert is open; not at all to
        one last told it was over (and not that it was back); held with the alert's waiting events
        for one who has not heard of it yet; not at all to one who never will (see the module doc)."""
        last = await self.log.latest_sent(sub.name, record.alert_id)
        if _believes_open(last):
            return await self._deliver(sub, [record], self.policy.inline_attempts)
        if last is not None:
            return await self._nothing_to_clear(record, last, self.clock())
        until = await self._waiting_until(record)
        if until is not None:
            return [await self._put_held(record, "with_alert", until)]
        moot = record.but(status="superseded", next_attempt_at=None,
                          error="not sent: the alert it clears was never announced to this subscriber")
        await self.log.put(moot)
        log.info("not sending the all clear of alert %s #%d to %s: it never heard of the alert",
                 record.alert_id, record.sequence, sub.name)
        return [moot]

    async def _nothing_to_clear(self, record: DeliveryRecord, last: DeliveryRecord,
                                now: datetime) -> list[DeliveryRecord]:
        """An all clear for one whose latest message of the alert was its all clear (``last``):
        they were not told it was back, so it is not sent, and neither are the alert's earlier
        events still waiting (the reopen held for the night): the alert is over again."""
        results: list[DeliveryRecord] = []
        for waiting in await self.log.waiting(record.subscription, record.alert_id):
            if waiting.id != record.id and waiting.sequence < record.sequence:
                await self._supersede(waiting, record.sequence, now, results)
        moot = record.but(status="superseded", at=now, next_attempt_at=None,
                          error=f"not sent: the subscriber's last message of the alert was its all clear "
                                f"(event #{last.sequence}); they were not told it was back")
        await self.log.put(moot)
        log.info("not sending the all clear of alert %s #%d to %s: it was not told the alert was back",
                 record.alert_id, record.sequence, record.subscription)
        results.append(moot)
        return results

    async def _waiting_until(self, record: DeliveryRecord) -> datetime | None:
        """When the first other unsent event of this alert to this subscriber is due, if any."""
        times = [r.next_attempt_at for r in await self.log.waiting(record.subscription, record.alert_id)
                 if r.id != record.id and r.next_attempt_at is not None]
        return min(times, default=None)

    async def _put_held(self, record: DeliveryRecord, reason: str, until: datetime,
                        now: datetime | None = None) -> DeliveryRecord:
        held = record.but(status="held", reason=reason, next_attempt_at=until)
        if record.first_attempt_at is not None and reason in ("quiet_hours", "digest"):
            # A retry waiting for the morning: the night does not count toward giving up.
            night = max((until - (now or self.clock())).total_seconds(), 0.0)
            held = held.but(held_seconds=record.held_seconds + night)
        await self.log.put(held)
        log.info("holding alert %s #%d for %s (%s) until %s",
                 record.alert_id, record.sequence, record.subscription, reason, until.isoformat())
        return held

    async def _keep_after_crash(
        self, records: list[DeliveryRecord], exc: Exception, unrecorded: list[Exception]
    ) -> list[DeliveryRecord]:
        """Record an unexpected error on each delivery it hit that is not finished yet: pending,
        retried later, failed once ``give_up_after`` has passed. What cannot be recorded (the log
        itself failing) goes to ``unrecorded``."""
        crash = _Outcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:300], attempts=1)
        kept = []
        for record in records:
            try:
                current = await self.log.get(record.id) or record
                if current.status in ("held", "pending"):
                    started = current.but(first_attempt_at=_first_attempt(current, self.clock()))
                    current = await self._record(started, crash)
                kept.append(current)
            except Exception as again:
                log.exception("could not record the failed delivery %s", record.id)
                unrecorded.append(again)
        return kept

    async def _hold(self, sub: Subscription, alert: Alert, now: datetime) -> tuple[str, datetime] | None:
        if sub.digest is not None:
            due = sub.digest_due(now)
            if alert.severity != "critical":  # a period that ends at night goes out in the morning
                due = sub.quiet_until(due) or due
            return "digest", due
        if alert.severity == "critical":
            return None  # critical goes through quiet hours and cooldowns
        quiet_until = sub.quiet_until(now)
        if quiet_until is not None:
            return "quiet_hours", quiet_until
        if sub.cooldown:
            last = await self.log.last_sent(sub.name, alert.topic)
            if last is not None and now < last + sub.cooldown and not await self._reopen_of_told(sub, alert):
                return "cooldown", last + sub.cooldown
        return None

    async def _reopen_of_told(self, sub: Subscription, alert: Alert) -> bool:
        """Whether ``alert`` reopens an alert ``sub`` was sent an earlier event of: the sequel of
        what it was told, not a new episode of the topic, so not held by the cooldown."""
        return (alert.status == "open" and alert.sequence > 0
                and await self.log.latest_sent(sub.name, alert.id) is not None)

    async def retry_due(self, now: datetime | None = None, *,
                        still_mine: Callable[[], bool] | None = None) -> list[DeliveryRecord]:
        """Send what has come due: held deliveries whose wait is over, and pending retries.

        Each subscription's alert (or digest) is handled on its own: an unexpected error is
        recorded on its deliveries and the others still go out. ``still_mine`` is asked before
        each: once it says no (a rebalance gave the alerts to another worker), the pass stops and
        the new owner sends the rest."""
        now = now or self.clock()
        groups: dict[tuple[str, str], list[DeliveryRecord]] = defaultdict(list)
        for record in await self.log.due(now):
            group = "digest" if record.reason == "digest" else record.alert_id
            groups[(record.subscription, group)].append(record)
        results: list[DeliveryRecord] = []
        unrecorded: list[Exception] = []
        for (name, group), records in groups.items():
            if still_mine is not None and not still_mine():
                log.info("stopping the retry pass: the alerts moved to another worker")
                break
            try:
                async with self._turn(name, group):
                    results.extend(await self._release(name, group, records, now))
            except Exception as exc:
                log.exception("sending the due deliveries of %s to %s failed unexpectedly", group, name)
                results.extend(await self._keep_after_crash(records, exc, unrecorded))
        _raise_first(unrecorded)
        return results

    async def _release(self, name: str, group: str, records: list[DeliveryRecord], now: datetime) -> list[DeliveryRecord]:
        """Send one subscription's due deliveries of one alert (or its digest)."""
        results: list[DeliveryRecord] = []
        # Read again: while this waited for its turn, the alert's newer event may have gone out.
        current = [await self.log.get(r.id) for r in records]
        records = [r for r in current if r is not None and r.status in ("held", "pending")
                   and r.next_attempt_at is not None and r.next_attempt_at <= now]
        if not records:
            return results
        sub = self.subscriptions.get(name)
        if sub is None:
            # Removed from the config: as for a disabled one, nothing is sent, and nothing failed.
            for record in records:
                results.append(await self._cancel(record, f"subscription {name} is no longer configured", now))
            return results
        # The subscription may have changed since these were held (a restart with a new config).
        records = await self._drop_unwanted(sub, records, now, results)
        if not records:
            return results
        latest = await self._collapse(records, now, results)
        if group == "digest":
            # A failed digest is retried as it was, under its own key; what came due since goes
            # in a digest of its own. (Its events superseded meanwhile leave it: the receiver that
            # did get the first try drops the retry by its key, and the newer events come anyway.)
            batches: dict[str | None, list[DeliveryRecord]] = defaultdict(list)
            for record in latest:
                sent_seq = _sequence(await self.log.latest_sent(sub.name, record.alert_id))
                if record.digest_key is None and sent_seq is not None and sent_seq > record.sequence:
                    # A newer event of its alert went out first (a critical one, through quiet hours).
                    await self._supersede(record, sent_seq, now, results)
                    continue
                batches[record.digest_key].append(record)
            quiet_until = sub.quiet_until(now)
            for batch in batches.values():
                if quiet_until is not None and not any(r.severity == "critical" for r in batch):
                    # A retry of a failed digest that comes due at night waits for the morning.
                    results.extend([await self._put_held(r, "digest", quiet_until, now) for r in batch])
                    continue
                results.extend(await self._deliver(sub, batch, min(self._tries(r) for r in batch)))
            return results
        (record,) = latest
        last = await self.log.latest_sent(sub.name, record.alert_id)
        sent_seq = _sequence(last)
        if sent_seq is not None and sent_seq > record.sequence:
            await self._supersede(record, sent_seq, now, results)
            return results
        if record.alert_status == "resolved" and last is not None and not _believes_open(last):
            # They were last told the alert was over, and not that it was back.
            results.extend(await self._nothing_to_clear(record, last, now))
            return results
        if record.alert_status == "resolved" and last is None:
            # Its alert's earlier events are still on their way (a retry): the all clear goes with them.
            until = await self._waiting_until(record)
            if until is not None:
                results.append(await self._put_held(record, "with_alert", until))
                return results
        # A retry, or a delivery whose cooldown ended, that came due in quiet hours waits as a first
        # send would: critical goes through, and so does an all clear to one told the alert is open.
        through = record.severity == "critical" or (record.alert_status == "resolved" and _believes_open(last))
        quiet_until = None if through else sub.quiet_until(now)
        if quiet_until is not None:
            results.append(await self._put_held(record, "quiet_hours", quiet_until, now))
            return results
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
        digest = records[0].reason == "digest"
        key = _digest_key(sub.name, records) if digest else None
        # Claim first: if the worker dies mid-send, retry_due picks this up after the lease.
        lease = self.policy.lease_for(max_try_seconds(sub.channel), tries)
        claimed = [r.but(status="pending", at=now, next_attempt_at=now + lease,
                         first_attempt_at=_first_attempt(r, now), digest_key=key) for r in records]
        for record in claimed:
            await self.log.put(record)
        notifier = self.notifier(sub)
        alerts = [r.to_alert() for r in claimed]
        if key is not None:
            outcome = await self._attempt(lambda: notifier.send_digest(alerts, key), tries)
        else:
            outcome = await self._attempt(lambda: notifier.send(alerts[0], claimed[0].idempotency_key), tries)
        return [await self._record(r, outcome) for r in claimed]

    async def _attempt(self, send: Callable[[], Awaitable[str | None]], tries: int) -> _Outcome:
        outcome = _Outcome(ok=False)
        for i in range(tries):
            outcome.attempts += 1
            try:
                note = await send()
            except PermanentDeliveryError as exc:
                return _Outcome(ok=False, permanent=True, error=str(exc), attempts=outcome.attempts)
            except RetriableDeliveryError as exc:
                outcome.error, outcome.retry_after = str(exc), self.policy.honoured(exc.retry_after)
            except Exception as exc:  # a bug or an unforeseen library error: keep the delivery, retry later
                outcome.error, outcome.retry_after = f"{type(exc).__name__}: {exc}", None
            else:
                return _Outcome(ok=True, attempts=outcome.attempts, note=note)
            if i + 1 < tries:
                wait = outcome.retry_after if outcome.retry_after is not None else self.policy.inline_backoff * 2**i
                if wait > self.policy.max_inline_wait:
                    break  # the receiver asked for a long pause: leave it to retry_due
                await self.sleep(wait)
        return outcome

    async def _record(self, record: DeliveryRecord, outcome: _Outcome) -> DeliveryRecord:
        now = self.clock()
        attempts = record.attempts + outcome.attempts
        name = record.subscription
        if outcome.ok:
            done = record.but(status="sent", attempts=attempts, error=outcome.note, at=now, next_attempt_at=None)
            log.info("delivered alert %s #%d to %s via %s", record.alert_id, record.sequence, name, record.channel)
            if outcome.note:
                log.warning("alert %s #%d to %s: %s", record.alert_id, record.sequence, name, outcome.note)
        elif outcome.permanent or self.policy.gives_up(record, now):
            error = outcome.error if outcome.permanent else f"gave up after {attempts} attempts: {outcome.error}"
            done = record.but(status="failed", attempts=attempts, error=error, at=now, next_attempt_at=None)
            log.error("delivery of alert %s #%d to %s failed: %s", record.alert_id, record.sequence, name, error)
        else:
            when = now + self.policy.later(attempts, outcome.retry_after)
            done = record.but(status="pending", attempts=attempts, error=outcome.error, at=now, next_attempt_at=when)
            log.warning("delivery of alert %s #%d to %s will be retried at %s: %s",
                        record.alert_id, record.sequence, name, when.isoformat(), outcome.error)
        await self.log.put(done)
        return done

    async def send_test(self, name: str, alert: Alert) -> tuple[bool, int, str | None]:
        """Send ``alert`` through one subscription now, ignoring its rules; nothing is logged."""
        sub = self.subscriptions[name]
        notifier = self.notifier(sub)
        key = f"test:{alert.id}:{alert.sequence}:{name}"
        outcome = await self._attempt(lambda: notifier.send(alert, key), self.policy.inline_attempts)
        return outcome.ok, outcome.attempts, outcome.error


def _believes_open(last_sent: DeliveryRecord | None) -> bool:
    """Whether a subscriber whose latest sent event of an alert is ``last_sent`` was last told
    the alert is open (it was sent an event of it, and that event is not its all clear)."""
    return last_sent is not None and last_sent.alert_status != "resolved"


def _sequence(record: DeliveryRecord | None) -> int | None:
    return record.sequence if record is not None else None


def _first_attempt(record: DeliveryRecord, now: datetime) -> datetime | None:
    """When the record's first send attempt was: ``now`` if this is it. A record from before
    ``first_attempt_at`` existed that was tried already keeps None (give-up counts from created_at)."""
    return record.first_attempt_at or (now if record.attempts == 0 else None)


def _digest_key(subscription: str, records: list[DeliveryRecord]) -> str:
    """A digest's idempotency key: the one it first went out under, when it is a retry."""
    earlier = {r.digest_key for r in records}
    if len(earlier) == 1 and None not in earlier:
        return next(iter(earlier))  # type: ignore[return-value]
    return "digest:" + subscription + ":" + ",".join(sorted(r.id for r in records))


def _raise_first(unrecorded: list[Exception]) -> None:
    """An error that could not be recorded must not vanish: the caller sees the first (all
    were logged) and handles the event again (idempotency keys skip what was done; the
    worker's alert agent tries until it succeeds, see ``stream.until_done``)."""
    if unrecorded:
        raise unrecorded[0]

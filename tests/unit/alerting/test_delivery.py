from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.records import Alert
from streams.alerting.delivery import DeliveryRecord, Dispatcher, InMemoryDeliveryLog, RetryPolicy
from streams.alerting.notifiers import max_try_seconds
from streams.alerting.notifiers.errors import PermanentDeliveryError, RetriableDeliveryError
from streams.alerting.subscriptions import QuietHours, Subscription

# 2024-07-01 02:00 UTC is 12:00 in Sydney (UTC+10): outside quiet hours.
NOON = datetime(2024, 7, 1, 2, 0, tzinfo=UTC)
NIGHT = datetime(2024, 7, 1, 13, 0, tzinfo=UTC)  # 23:00 in Sydney
MORNING = datetime(2024, 7, 1, 21, 0, tzinfo=UTC)  # 07:00 in Sydney
URL = "https://hooks.example.com/services/XXXXsecretXXXX"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeNotifier:
    """Records what it was asked to send; fails as scripted first."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.sent: list[tuple[str, Any]] = []

    async def send(self, alert: Alert, event_key: str) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((event_key, alert))

    async def send_digest(self, alerts: list[Alert], event_key: str) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((event_key, alerts))


def sub(name: str = "ops", **fields: Any) -> Subscription:
    return Subscription.model_validate({"name": name, "channel": {"type": "slack", "url": URL}, **fields})


def alert(seq: int = 0, *, severity: str = "major", status: str = "open", id: str = "a1", topic: str = "outage") -> Alert:
    return Alert.model_validate(dict(
        id=id, topic=topic, status=status, severity=severity, opened_at=NOON, updated_at=NOON,
        window_start=NOON, observed=50, expected=10, score=0.99, sequence=seq,
    ))


def make(subs: list[Subscription], notifiers: dict[str, FakeNotifier], now: datetime = NOON,
         policy: RetryPolicy | None = None) -> tuple[Dispatcher, InMemoryDeliveryLog, Clock, list[float]]:
    clock, sleeps, log = Clock(now), [], InMemoryDeliveryLog()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += timedelta(seconds=seconds)

    d = Dispatcher(subs, log, notifiers=notifiers, clock=clock, sleep=sleep, policy=policy)
    return d, log, clock, sleeps


async def test_sends_to_matching_subscriptions_once() -> None:
    ops, comms = FakeNotifier(), FakeNotifier()
    d, log, _, _ = make([sub("ops"), sub("comms", topics=["scam"])], {"ops": ops, "comms": comms})
    [record] = await d.dispatch(alert())
    assert record.status == "sent" and record.attempts == 1 and record.subscription == "ops"
    assert ops.sent[0][0] == "a1:0:ops" and comms.sent == []
    # The same alert event redelivered by Kafka: nothing is sent twice.
    assert await d.dispatch(alert()) == []
    assert len(ops.sent) == 1
    # The next event of the alert is a new delivery.
    await d.dispatch(alert(1, status="update"))
    assert [k for k, _ in ops.sent] == ["a1:0:ops", "a1:1:ops"]


async def test_retries_in_line_with_backoff_then_sends() -> None:
    n = FakeNotifier(RetriableDeliveryError("503"), RetriableDeliveryError("503"))
    d, log, _, sleeps = make([sub()], {"ops": n})
    [record] = await d.dispatch(alert())
    assert record.status == "sent" and record.attempts == 3
    assert sleeps == [1.0, 2.0]
    assert log.records["a1:0:ops"].status == "sent"


async def test_keeps_failing_becomes_pending_and_retry_due_sends_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    n = FakeNotifier(*[RetriableDeliveryError("https://hooks.example.com answered 503")] * 4)
    d, log, clock, _ = make([sub()], {"ops": n})
    [record] = await d.dispatch(alert())
    assert record.status == "pending" and record.attempts == 3
    assert record.error == "https://hooks.example.com answered 503"
    assert record.next_attempt_at == clock.now + timedelta(minutes=4)
    assert await d.retry_due(clock.now) == []  # not due yet
    clock.now = record.next_attempt_at
    [again] = await d.retry_due()
    assert again.status == "pending" and again.attempts == 4
    clock.now = again.next_attempt_at  # type: ignore[assignment]
    [done] = await d.retry_due()
    assert done.status == "sent" and done.attempts == 5 and len(n.sent) == 1
    assert "secret" not in caplog.text


async def test_retry_after_is_honoured() -> None:
    n = FakeNotifier(RetriableDeliveryError("429", retry_after=120))
    d, _, clock, sleeps = make([sub()], {"ops": n})
    [record] = await d.dispatch(alert())
    # Too long to wait in line: left to retry_due at the time the receiver asked for.
    assert sleeps == [] and record.status == "pending"
    assert record.next_attempt_at == clock.now + timedelta(minutes=2)


async def test_permanent_error_is_recorded_as_failed_not_dropped() -> None:
    n = FakeNotifier(PermanentDeliveryError("https://hooks.example.com answered 404: no_service"))
    d, log, clock, _ = make([sub()], {"ops": n})
    [record] = await d.dispatch(alert())
    assert record.status == "failed" and record.attempts == 1 and "404" in (record.error or "")
    assert log.records[record.id].status == "failed"
    assert await d.retry_due(clock.now + timedelta(days=2)) == []


async def test_gives_up_after_a_day_and_says_so() -> None:
    n = FakeNotifier(*[RetriableDeliveryError("timed out")] * 100)
    d, _, clock, _ = make([sub()], {"ops": n}, policy=RetryPolicy(inline_attempts=1))
    [record] = await d.dispatch(alert())
    while record.status == "pending":
        clock.now = record.next_attempt_at  # type: ignore[assignment]
        [record] = await d.retry_due()
    assert record.status == "failed" and record.error is not None and record.error.startswith("gave up after")
    assert clock.now >= NOON + timedelta(hours=24)


async def test_quiet_hours_hold_then_release_latest_event_only() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d, log, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=NIGHT)
    [held] = await d.dispatch(alert(0))
    assert held.status == "held" and held.reason == "quiet_hours" and held.next_attempt_at == MORNING
    clock.now = NIGHT + timedelta(hours=2)
    await d.dispatch(alert(1, status="update"))
    assert n.sent == []
    assert await d.retry_due(MORNING - timedelta(minutes=1)) == []
    clock.now = MORNING
    results = {r.id: r.status for r in await d.retry_due()}
    assert results == {"a1:0:ops": "superseded", "a1:1:ops": "sent"}
    assert [k for k, _ in n.sent] == ["a1:1:ops"]


async def test_critical_goes_through_quiet_hours() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d, _, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=NIGHT)
    await d.dispatch(alert(0, severity="major"))
    [sent] = await d.dispatch(alert(1, severity="critical", status="update"))
    assert sent.status == "sent"
    # In the morning the held, older event is stale: it is not sent after the newer one.
    clock.now = MORNING
    [stale] = await d.retry_due()
    assert stale.status == "superseded" and [k for k, _ in n.sent] == ["a1:1:ops"]


async def test_a_retry_that_comes_due_in_quiet_hours_waits_for_the_morning() -> None:
    # The receiver is down at 21:55 Sydney; the retry would come due after 22:00.
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 3)
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    evening = NIGHT - timedelta(hours=1, minutes=2)  # 21:58 Sydney
    d, _, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=evening)
    [record] = await d.dispatch(alert(0))
    assert record.status == "pending" and record.next_attempt_at is not None
    clock.now = record.next_attempt_at
    assert QuietHours.model_validate(quiet).is_quiet(clock.now)
    [held] = await d.retry_due()
    assert held.status == "held" and held.reason == "quiet_hours" and held.next_attempt_at == MORNING
    assert held.attempts == 3 and n.sent == []
    clock.now = MORNING
    [sent] = await d.retry_due()
    assert sent.status == "sent" and sent.attempts == 4 and [k for k, _ in n.sent] == ["a1:0:ops"]


async def test_a_critical_retry_goes_through_quiet_hours() -> None:
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 3)
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d, _, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=NIGHT)
    [record] = await d.dispatch(alert(0, severity="critical"))
    clock.now = record.next_attempt_at  # type: ignore[assignment]
    [sent] = await d.retry_due()
    assert sent.status == "sent" and len(n.sent) == 1


async def test_an_all_clear_that_comes_due_with_a_retry_in_quiet_hours_waits_with_it() -> None:
    # The trigger failed at 21:58 and the all clear came at 22:01: neither was heard, so at night
    # the all clear (which supersedes the trigger) waits for the morning, as the trigger would.
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 3)
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d, _, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=NIGHT - timedelta(hours=1, minutes=2))
    [trigger] = await d.dispatch(alert(0))
    assert trigger.status == "pending"
    clock.now = NIGHT - timedelta(minutes=59)
    [resolve] = await d.dispatch(alert(1, status="resolved"))
    assert resolve.status == "held" and resolve.reason == "with_alert"
    clock.now = max(trigger.next_attempt_at, resolve.next_attempt_at)  # type: ignore[type-var]
    results = {r.id: (r.status, r.reason) for r in await d.retry_due()}
    assert results == {"a1:0:ops": ("superseded", None), "a1:1:ops": ("held", "quiet_hours")}
    assert n.sent == []
    clock.now = MORNING
    [sent] = await d.retry_due()
    assert sent.id == "a1:1:ops" and sent.status == "sent" and [k for k, _ in n.sent] == ["a1:1:ops"]


async def test_a_cooldown_that_ends_in_quiet_hours_waits_for_the_morning() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    evening = NIGHT - timedelta(hours=1, minutes=10)  # 21:50 Sydney
    d, _, clock, _ = make([sub(quiet_hours=quiet, cooldown="30m")], {"ops": n}, now=evening)
    assert (await d.dispatch(alert(0, id="a1")))[0].status == "sent"
    clock.now += timedelta(minutes=5)
    [held] = await d.dispatch(alert(0, id="a2"))
    assert held.reason == "cooldown" and held.next_attempt_at == evening + timedelta(minutes=30)
    clock.now = held.next_attempt_at  # type: ignore[assignment]  # 22:20 Sydney
    [again] = await d.retry_due()
    assert again.status == "held" and again.reason == "quiet_hours" and again.next_attempt_at == MORNING
    clock.now = MORNING
    [sent] = await d.retry_due()
    assert sent.status == "sent" and [k for k, _ in n.sent] == ["a1:0:ops", "a2:0:ops"]


async def test_cooldown_per_subscription_and_topic() -> None:
    n = FakeNotifier()
    d, _, clock, _ = make([sub(cooldown="15m", topics=["*"])], {"ops": n})
    assert (await d.dispatch(alert(0)))[0].status == "sent"
    clock.now += timedelta(minutes=5)
    [held] = await d.dispatch(alert(1, status="update"))
    assert held.status == "held" and held.reason == "cooldown"
    assert held.next_attempt_at == NOON + timedelta(minutes=15)
    # Another topic is not in this topic's cooldown.
    assert (await d.dispatch(alert(0, id="b1", topic="scam")))[0].status == "sent"
    # The all clear is not held back.
    assert (await d.dispatch(alert(2, status="resolved")))[0].status == "sent"
    clock.now = NOON + timedelta(minutes=15)
    [late] = await d.retry_due()
    assert late.status == "superseded"  # the resolve already went out


async def test_a_cooldown_ends_on_the_minute_it_names() -> None:
    n = FakeNotifier()
    d, _, clock, _ = make([sub(cooldown="15m")], {"ops": n})
    assert (await d.dispatch(alert(0)))[0].status == "sent"
    clock.now = NOON + timedelta(minutes=15) - timedelta(seconds=1)
    assert (await d.dispatch(alert(1, status="update")))[0].status == "held"
    clock.now = NOON + timedelta(minutes=15)
    assert (await d.dispatch(alert(2, status="update")))[0].status == "sent"


async def test_digest_collects_and_sends_one_message_per_period() -> None:
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 3)
    d, log, clock, _ = make([sub(digest="1h", topics=["*"])], {"ops": n})
    clock.now = NOON + timedelta(minutes=10)
    await d.dispatch(alert(0))
    await d.dispatch(alert(1, status="update"))
    await d.dispatch(alert(0, id="b1", topic="scam"))
    assert n.sent == []
    boundary = NOON + timedelta(hours=1)
    assert {r.next_attempt_at for r in log.records.values()} == {boundary}
    clock.now = boundary
    first = await d.retry_due()
    # The digest failed all its in-line tries: every event in it waits for the next pass.
    assert {r.status for r in first if r.id != "a1:0:ops"} == {"pending"}
    clock.now = max(r.next_attempt_at for r in first if r.next_attempt_at)  # type: ignore[type-var]
    await d.retry_due()
    [(key, alerts)] = n.sent
    assert key.startswith("digest:ops:")
    assert sorted((a.id, a.sequence) for a in alerts) == [("a1", 1), ("b1", 0)]
    assert {r.id: r.status for r in log.records.values()} == {
        "a1:0:ops": "superseded", "a1:1:ops": "sent", "b1:0:ops": "sent"
    }


async def test_a_retry_pass_stops_when_the_alerts_move_to_another_worker() -> None:
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 6)
    d, log, clock, _ = make([sub()], {"ops": n}, policy=RetryPolicy(inline_attempts=1))
    for name in ("a1", "a2", "a3"):
        await d.dispatch(alert(0, id=name))
    clock.now += timedelta(hours=1)
    asked = []

    def still_mine() -> bool:
        asked.append(1)
        return len(asked) < 2  # the partition moved after the first alert's retry

    done = await d.retry_due(still_mine=still_mine)
    assert [r.alert_id for r in done] == ["a1"]
    assert {r.id: r.attempts for r in log.records.values()} == {"a1:0:ops": 2, "a2:0:ops": 1, "a3:0:ops": 1}


class Attempts(FakeNotifier):
    """Also records the key of every digest it was asked to send, delivered or not."""

    def __init__(self, *failures: Exception) -> None:
        super().__init__(*failures)
        self.keys: list[str] = []

    async def send_digest(self, alerts: list[Alert], event_key: str) -> None:
        self.keys.append(event_key)
        await super().send_digest(alerts, event_key)


async def test_a_failed_digest_is_retried_under_its_own_key_and_later_events_go_apart() -> None:
    # The receiver timed out on the first try: it may have taken it, so the retry must carry
    # the same key for it to drop, and nothing more.
    n = Attempts(RetriableDeliveryError("timed out"))
    policy = RetryPolicy(inline_attempts=1, retry_backoff=timedelta(hours=1))
    d, log, clock, _ = make([sub(digest="1h", topics=["*"])], {"ops": n}, policy=policy)
    clock.now = NOON + timedelta(minutes=10)
    await d.dispatch(alert(0, id="a1"))
    await d.dispatch(alert(0, id="b1", topic="scam"))
    clock.now = NOON + timedelta(hours=1)
    failed = await d.retry_due()
    assert {r.status for r in failed} == {"pending"} and n.sent == []
    clock.now += timedelta(minutes=5)
    await d.dispatch(alert(0, id="c1", topic="refund"))  # for the next digest
    clock.now = NOON + timedelta(hours=2)  # both the retry and the next digest are due
    await d.retry_due()
    first_try = n.keys[0]
    assert [(key, sorted(a.id for a in alerts)) for key, alerts in n.sent] == [
        (first_try, ["a1", "b1"]), (n.keys[-1], ["c1"])]
    assert n.keys[-1] != first_try
    assert {r.status for r in log.records.values()} == {"sent"}
    assert log.records["a1:0:ops"].digest_key == first_try


async def test_a_removed_subscriptions_due_deliveries_are_cancelled_not_failed() -> None:
    log = InMemoryDeliveryLog()
    clock = Clock(NOON)
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d1 = Dispatcher([sub(quiet_hours=quiet)], log, notifiers={"ops": FakeNotifier()}, clock=clock)
    clock.now = NIGHT
    await d1.dispatch(alert())
    d2 = Dispatcher([], log, clock=clock)
    [record] = await d2.retry_due(MORNING)
    # Removed from the config on purpose, like a disabled one: not a delivery failure to chase.
    assert record.status == "cancelled" and record.error == "not sent: subscription ops is no longer configured"
    assert record.next_attempt_at is None and log.records[record.id] == record


@pytest.mark.parametrize(("asked", "waits"), [
    # no number: the in-line tries' own waits (1 s, 2 s), then 1 min doubled twice
    (math.nan, timedelta(minutes=4, seconds=3)),
    (-math.inf, timedelta(minutes=4)),  # "no wait": three tries at once, then the same backoff
    (math.inf, timedelta(hours=24)),  # capped at give_up_after
    (1e12, timedelta(hours=24)),
])
async def test_an_absurd_retry_after_is_capped_and_the_delivery_still_gives_up(asked: float, waits: timedelta) -> None:
    n = FakeNotifier(*[RetriableDeliveryError("429", retry_after=asked)] * 100)
    d, _, clock, _ = make([sub()], {"ops": n})
    [record] = await d.dispatch(alert())
    assert record.status == "pending" and record.next_attempt_at == NOON + waits
    assert record.error == "429"  # the receiver's answer, not an error of our own arithmetic
    while record.status == "pending":
        clock.now = record.next_attempt_at  # type: ignore[assignment]
        [record] = await d.retry_due()
    assert record.status == "failed" and (record.error or "").startswith("gave up after")


async def test_an_unexpected_error_for_one_subscriber_is_recorded_and_the_others_still_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def broken(self: QuietHours, now: datetime) -> bool:
        calls.append(now)
        if len(calls) == 1:  # the first look at the quiet hours fails
            raise TypeError("can't compare offset-naive and offset-aware times")
        return False

    monkeypatch.setattr(QuietHours, "is_quiet", broken)
    ops, comms = FakeNotifier(), FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00"}
    d, log, clock, _ = make([sub("ops", quiet_hours=quiet), sub("comms")], {"ops": ops, "comms": comms})
    results = {r.subscription: r for r in await d.dispatch(alert())}
    assert results["comms"].status == "sent" and len(comms.sent) == 1
    kept = log.records["a1:0:ops"]
    assert results["ops"] == kept and kept.status == "pending"
    assert "TypeError: can't compare" in (kept.error or "") and kept.next_attempt_at is not None
    # Kept, not dropped: the next pass sends it.
    clock.now = kept.next_attempt_at
    [again] = await d.retry_due()
    assert again.status == "sent" and [k for k, _ in ops.sent] == ["a1:0:ops"]


class FlakyLog(InMemoryDeliveryLog):
    """A delivery log whose latest-sent lookup fails for one subscription."""

    def __init__(self, broken_for: str) -> None:
        super().__init__()
        self.broken_for = broken_for

    async def latest_sent(self, subscription: str, alert_id: str) -> DeliveryRecord | None:
        if subscription == self.broken_for:
            raise RuntimeError("search failed")
        return await super().latest_sent(subscription, alert_id)


async def test_retry_due_isolates_each_subscribers_deliveries() -> None:
    ops, comms = FakeNotifier(), FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    log, clock = FlakyLog("ops"), Clock(NIGHT)
    d = Dispatcher([sub("ops", quiet_hours=quiet), sub("comms", quiet_hours=quiet)], log,
                   notifiers={"ops": ops, "comms": comms}, clock=clock)
    assert {r.status for r in await d.dispatch(alert())} == {"held"}
    clock.now = MORNING
    results = {r.subscription: r for r in await d.retry_due()}
    assert results["comms"].status == "sent" and len(comms.sent) == 1
    assert results["ops"].status == "pending" and "RuntimeError: search failed" in (results["ops"].error or "")
    # It keeps failing: it is retried with backoff and given up a day after that first try, not kept forever.
    record = results["ops"]
    while record.status == "pending":
        clock.now = record.next_attempt_at  # type: ignore[assignment]
        [record] = await d.retry_due()
    assert record.status == "failed" and clock.now >= MORNING + timedelta(hours=24)


async def test_an_error_the_log_cannot_record_is_raised_after_the_others_were_served() -> None:
    class DownForOps(InMemoryDeliveryLog):
        async def get(self, record_id: str) -> DeliveryRecord | None:
            if record_id.endswith(":ops"):
                raise ConnectionError("elasticsearch unreachable")
            return await super().get(record_id)

    ops, comms = FakeNotifier(), FakeNotifier()
    log = DownForOps()
    d = Dispatcher([sub("ops"), sub("comms")], log, notifiers={"ops": ops, "comms": comms}, clock=Clock(NOON))
    with pytest.raises(ConnectionError):
        await d.dispatch(alert())
    assert log.records["a1:0:comms"].status == "sent"


async def test_a_delivery_gives_up_on_the_minute_give_up_after_ends() -> None:
    policy = RetryPolicy(inline_attempts=1, retry_backoff=timedelta(minutes=30),
                         max_retry_backoff=timedelta(minutes=30), give_up_after=timedelta(hours=1))
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 100)
    d, _, clock, _ = make([sub()], {"ops": n}, policy=policy)
    [record] = await d.dispatch(alert())
    clock.now = NOON + timedelta(minutes=30)
    [record] = await d.retry_due()
    assert record.status == "pending" and record.next_attempt_at == NOON + timedelta(hours=1)
    clock.now = NOON + timedelta(hours=1)  # an hour of trying, to the minute: the last try
    [record] = await d.retry_due()
    assert record.status == "failed" and record.attempts == 3


async def test_time_held_does_not_count_against_giving_up() -> None:
    policy = RetryPolicy(inline_attempts=1, give_up_after=timedelta(hours=1))
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 100)
    d, log, clock, _ = make([sub(digest="2h", topics=["*"])], {"ops": n}, policy=policy)
    clock.now = NOON + timedelta(minutes=1)
    [held] = await d.dispatch(alert())
    release = NOON + timedelta(hours=2)
    assert held.next_attempt_at == release  # held for 1h59m, longer than give_up_after
    clock.now = release
    [record] = await d.retry_due()
    # One failed try after a long hold is not a day of failing: it is retried...
    assert record.status == "pending" and record.first_attempt_at == release
    while record.status == "pending":
        clock.now = record.next_attempt_at  # type: ignore[assignment]
        [record] = await d.retry_due()
    # ...until give_up_after has passed since that first try.
    assert record.status == "failed" and clock.now >= release + timedelta(hours=1)


async def test_a_record_from_before_first_attempt_at_gives_up_from_created_at() -> None:
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 10)
    d, log, clock, _ = make([sub()], {"ops": n}, now=NOON + timedelta(hours=25))
    old = DeliveryRecord.new(alert(), sub(), NOON).but(
        attempts=5, error="503", next_attempt_at=NOON + timedelta(hours=25)
    )
    await log.put(old)
    [record] = await d.retry_due()
    assert record.status == "failed" and record.first_attempt_at is None


class NotingNotifier(FakeNotifier):
    async def send(self, alert: Alert, event_key: str) -> str | None:
        await super().send(alert, event_key)
        return "smtp://mail:587: sent, but the server refused 1 recipient(s): opps@agency.example (550 no such user)"


async def test_a_partial_delivery_is_sent_with_the_note_on_the_record(caplog: pytest.LogCaptureFixture) -> None:
    d, log, _, _ = make([sub()], {"ops": NotingNotifier()})
    [record] = await d.dispatch(alert())
    assert record.status == "sent" and "opps@agency.example (550 no such user)" in (record.error or "")
    assert log.records[record.id] == record
    assert "opps@agency.example" in caplog.text


async def test_an_all_clear_goes_through_quiet_hours_when_the_alert_was_sent() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    evening = datetime(2024, 7, 1, 11, 55, tzinfo=UTC)  # 21:55 in Sydney
    d, _, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=evening)
    assert (await d.dispatch(alert(0)))[0].status == "sent"
    clock.now = NIGHT
    assert (await d.dispatch(alert(1, status="update")))[0].status == "held"  # updates still wait
    # The incident opened at 21:55 is closed when it is over, not at 07:00.
    [resolved] = await d.dispatch(alert(2, status="resolved"))
    assert resolved.status == "sent" and [k for k, _ in n.sent] == ["a1:0:ops", "a1:2:ops"]
    clock.now = MORNING
    assert [r.status for r in await d.retry_due()] == ["superseded"]


async def test_an_all_clear_waits_with_an_open_held_by_cooldown() -> None:
    n = FakeNotifier()
    d, _, clock, _ = make([sub(cooldown="15m")], {"ops": n})
    assert (await d.dispatch(alert(0, id="b1")))[0].status == "sent"
    clock.now = NOON + timedelta(minutes=5)
    [held] = await d.dispatch(alert(0))
    assert held.reason == "cooldown"
    clock.now = NOON + timedelta(minutes=6)
    # Not an all clear for a spike this subscriber has not been told of: it goes with the open.
    [waiting] = await d.dispatch(alert(2, status="resolved"))
    assert waiting.status == "held" and waiting.next_attempt_at == held.next_attempt_at
    assert [k for k, _ in n.sent] == ["b1:0:ops"]
    clock.now = NOON + timedelta(minutes=15)
    assert {r.id: r.status for r in await d.retry_due()} == {"a1:0:ops": "superseded", "a1:2:ops": "sent"}
    assert [k for k, _ in n.sent] == ["b1:0:ops", "a1:2:ops"]


async def test_an_all_clear_waits_with_an_open_still_being_retried() -> None:
    n = FakeNotifier(RetriableDeliveryError("503"))
    d, _, clock, _ = make([sub()], {"ops": n}, policy=RetryPolicy(inline_attempts=1))
    [pending] = await d.dispatch(alert(0))
    assert pending.status == "pending"
    [waiting] = await d.dispatch(alert(2, status="resolved"))
    assert waiting.status == "held" and waiting.next_attempt_at == pending.next_attempt_at and n.sent == []
    clock.now = pending.next_attempt_at  # type: ignore[assignment]
    assert {r.id: r.status for r in await d.retry_due()} == {"a1:0:ops": "superseded", "a1:2:ops": "sent"}


async def test_a_released_all_clear_waits_again_for_an_open_retried_later() -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub()], {"ops": n})
    later = NOON + timedelta(minutes=10)
    await log.put(DeliveryRecord.new(alert(0), sub(), NOON).but(attempts=1, error="503", next_attempt_at=later))
    await log.put(DeliveryRecord.new(alert(2, status="resolved"), sub(), NOON).but(
        status="held", reason="with_alert", next_attempt_at=NOON))
    [again] = await d.retry_due()
    assert again.status == "held" and again.next_attempt_at == later and n.sent == []


async def test_an_all_clear_for_an_alert_never_announced_is_not_sent() -> None:
    n = FakeNotifier()
    d, log, _, _ = make([sub()], {"ops": n})
    # e.g. a subscription added while the alert was open: it never heard of the spike.
    [record] = await d.dispatch(alert(2, status="resolved"))
    assert record.status == "superseded" and "never announced" in (record.error or "")
    assert n.sent == [] and log.records[record.id] == record


class GatedNotifier(FakeNotifier):
    """Holds the send of one event until the test opens the gate; records arrivals in order."""

    def __init__(self, gated_sequence: int) -> None:
        super().__init__()
        self.gated = gated_sequence
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def send(self, alert: Alert, event_key: str) -> None:
        if alert.sequence == self.gated:
            self.started.set()
            await self.gate.wait()
        self.sent.append((event_key, alert))


async def test_a_retry_in_flight_and_the_alerts_next_event_go_out_one_after_the_other() -> None:
    n = GatedNotifier(gated_sequence=1)
    d, log, clock, _ = make([sub()], {"ops": n})
    assert (await d.dispatch(alert(0)))[0].status == "sent"
    # The update failed earlier and is due for a retry just as the alert resolves.
    await log.put(DeliveryRecord.new(alert(1, status="update"), sub(), NOON).but(
        attempts=1, error="503", next_attempt_at=NOON))
    retry = asyncio.create_task(d.retry_due())
    await n.started.wait()  # the update is on its way to the receiver
    resolve = asyncio.create_task(d.dispatch(alert(2, status="resolved")))
    for _ in range(20):
        await asyncio.sleep(0)
    # The all clear waits for the update: sent now, it could arrive first and the late update
    # would open a new incident (PagerDuty) after the all clear.
    assert [k for k, _ in n.sent] == ["a1:0:ops"]
    n.gate.set()
    await retry
    [resolved] = await resolve
    assert resolved.status == "sent"
    assert [k for k, _ in n.sent] == ["a1:0:ops", "a1:1:ops", "a1:2:ops"]


async def test_a_retry_that_waited_its_turn_does_not_send_what_went_out_meanwhile() -> None:
    n = GatedNotifier(gated_sequence=0)
    d, log, clock, _ = make([sub()], {"ops": n})
    first = asyncio.create_task(d.dispatch(alert(0)))
    await n.started.wait()
    # A retry pass sees the same event as due (e.g. its claim's lease ran out) while it is sent.
    await log.put(DeliveryRecord.new(alert(0), sub(), NOON).but(status="pending", attempts=1,
                                                                 next_attempt_at=NOON))
    retry = asyncio.create_task(d.retry_due())
    for _ in range(20):
        await asyncio.sleep(0)
    n.gate.set()
    assert (await first)[0].status == "sent"
    assert await retry == []
    assert [k for k, _ in n.sent] == ["a1:0:ops"]


async def test_a_send_on_its_way_is_claimed_for_as_long_as_it_can_take() -> None:
    n = GatedNotifier(gated_sequence=0)
    d, log, clock, _ = make([sub()], {"ops": n})
    sending = asyncio.create_task(d.dispatch(alert(0)))
    await n.started.wait()  # the worker could die here, with the alert on its way
    claim = log.records["a1:0:ops"]
    # Three tries of at most 4 x 10 s (a Slack POST is cut off there), two waits of at most
    # 10 s, and a margin: retried after 170 s if the worker died, not five minutes.
    assert claim.status == "pending" and claim.next_attempt_at == NOON + timedelta(seconds=170)
    assert await d.retry_due(NOON + timedelta(seconds=160)) == []
    n.gate.set()
    [sent] = await sending
    assert sent.status == "sent"


def test_an_email_claim_allows_for_every_answer_of_the_conversation() -> None:
    mail = sub(channel={"type": "email", "host": "mail.example", "from": "earful@example.gov",
                        "to": ["ops@example.gov", "comms@example.gov"], "timeout": 20})
    # 12 answers of the server plus one per recipient, 20 s each, per try.
    assert max_try_seconds(mail.channel) == 14 * 20
    assert RetryPolicy().lease_for(max_try_seconds(mail.channel), tries=1) == timedelta(seconds=310)


async def test_a_digest_period_that_ends_in_quiet_hours_goes_out_when_they_end() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d, log, clock, _ = make([sub(digest="1h", topics=["*"], quiet_hours=quiet)], {"ops": n}, now=NIGHT)
    [held] = await d.dispatch(alert(0, severity="minor"))
    assert held.status == "held" and held.reason == "digest" and held.next_attempt_at == MORNING
    clock.now = NIGHT + timedelta(hours=1)  # the hour's period is over, at midnight in Sydney
    assert await d.retry_due() == [] and n.sent == []
    [critical] = await d.dispatch(alert(0, id="c1", severity="critical"))
    assert critical.next_attempt_at == NIGHT + timedelta(hours=2)  # its own period's end, night or not
    clock.now = MORNING
    sent = await d.retry_due()
    assert {r.id: r.status for r in sent} == {"a1:0:ops": "sent", "c1:0:ops": "sent"}
    [(key, alerts)] = n.sent
    assert key.startswith("digest:ops:") and {a.id for a in alerts} == {"a1", "c1"}


async def test_a_failed_digest_whose_retry_comes_due_at_night_waits_for_the_morning() -> None:
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 3)
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    evening = NIGHT - timedelta(hours=2, minutes=30)  # 20:30 Sydney: the period ends at 21:00
    d, log, clock, _ = make([sub(digest="1h", topics=["*"], quiet_hours=quiet)], {"ops": n}, now=evening)
    await d.dispatch(alert(0, severity="minor"))
    clock.now = NIGHT - timedelta(hours=2)  # 21:00: the digest fails its in-line tries
    [pending] = await d.retry_due()
    assert pending.status == "pending" and pending.digest_key is not None
    clock.now = NIGHT  # 23:00: the retry comes due in quiet hours
    [held] = await d.retry_due()
    assert held.status == "held" and held.reason == "digest" and held.next_attempt_at == MORNING
    assert held.digest_key == pending.digest_key and n.sent == []
    clock.now = MORNING
    [sent] = await d.retry_due()
    assert sent.status == "sent" and [k for k, _ in n.sent] == [pending.digest_key]


async def test_a_night_held_by_quiet_hours_does_not_count_toward_giving_up() -> None:
    policy = RetryPolicy(inline_attempts=1, give_up_after=timedelta(hours=3))
    n = FakeNotifier(*[RetriableDeliveryError("503")] * 100)
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    evening = NIGHT - timedelta(hours=1, minutes=2)  # 21:58 Sydney: the receiver is down
    d, log, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=evening, policy=policy)
    [record] = await d.dispatch(alert(0))
    while record.status == "pending":
        clock.now = record.next_attempt_at  # type: ignore[assignment]
        [record] = await d.retry_due()
    assert record.status == "held" and record.next_attempt_at == MORNING
    night = (MORNING - clock.now).total_seconds()
    assert record.held_seconds == night > 8 * 3600
    clock.now = MORNING
    [record] = await d.retry_due()
    # Nine hours after its first try, but only minutes of them spent trying: it is retried.
    assert record.status == "pending", record.error
    while record.status == "pending":
        clock.now = record.next_attempt_at  # type: ignore[assignment]
        [record] = await d.retry_due()
    # It gives up three hours of trying after the first, the night aside.
    assert record.status == "failed"
    assert clock.now - evening >= timedelta(hours=3) + timedelta(seconds=night)
    assert [stored.held_seconds for stored in log.records.values()] == [night]


async def test_a_digest_never_sends_an_event_older_than_one_already_sent() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d, log, clock, _ = make([sub(digest="1h", topics=["*"], quiet_hours=quiet)], {"ops": n}, now=NIGHT)
    await d.dispatch(alert(0, severity="minor"))  # waits for the morning
    await d.dispatch(alert(1, severity="critical", status="update"))  # goes at the period's end
    clock.now = NIGHT + timedelta(hours=1)
    assert [(r.id, r.status) for r in await d.retry_due()] == [("a1:1:ops", "sent")]
    clock.now = MORNING
    [stale] = await d.retry_due()
    assert stale.id == "a1:0:ops" and stale.status == "superseded"
    assert [[(a.id, a.sequence) for a in alerts] for _, alerts in n.sent] == [[("a1", 1)]]


async def test_a_daily_digest_goes_out_in_the_subscribers_morning_not_at_utc_midnight() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}
    d, log, clock, _ = make([sub(digest="1d", topics=["*"], quiet_hours=quiet)], {"ops": n}, now=NOON)
    [held] = await d.dispatch(alert(0, severity="minor"))
    # The day ends at midnight in Sydney, in quiet hours: it goes out when they end, at 07:00
    # there, not at 00:00 UTC (10:00 in Sydney).
    assert held.reason == "digest" and held.next_attempt_at == MORNING
    clock.now = MORNING
    [sent] = await d.retry_due()
    assert sent.status == "sent" and len(n.sent) == 1


async def test_a_delivery_held_in_the_repeated_hour_is_released_once_when_quiet_hours_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "02:30", "timezone": "Australia/Sydney"}
    second_pass = datetime(2025, 4, 5, 16, 10, tzinfo=UTC)  # 02:10 AEST, after the clocks went back
    d, _, clock, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=second_pass)
    [held] = await d.dispatch(alert(0))
    end = datetime(2025, 4, 5, 16, 30, tzinfo=UTC)  # 02:30 AEST
    assert held.status == "held" and held.next_attempt_at == end
    # The retry passes until then find nothing due: it is not held again and again.
    while clock.now < end - timedelta(seconds=30):
        clock.now += timedelta(seconds=30)
        assert await d.retry_due() == []
    clock.now = end
    [sent] = await d.retry_due()
    assert sent.status == "sent" and len(n.sent) == 1
    assert caplog.text.count("holding alert") == 1


async def test_quiet_hours_end_as_the_clocks_jump_over_their_end() -> None:
    n = FakeNotifier()
    quiet = {"start": "22:00", "end": "02:30", "timezone": "Australia/Sydney"}
    d, _, _, _ = make([sub(quiet_hours=quiet)], {"ops": n}, now=datetime(2025, 10, 4, 15, 10, tzinfo=UTC))
    [held] = await d.dispatch(alert(0))
    assert held.next_attempt_at == datetime(2025, 10, 4, 16, 0, tzinfo=UTC)  # 03:00 AEDT, not 03:30


def restarted(subs: list[Subscription], log: InMemoryDeliveryLog, clock: Clock,
              notifier: FakeNotifier) -> Dispatcher:
    """The worker restarted with a changed subscriptions file, on the same delivery log."""
    return Dispatcher(subs, log, notifiers={s.name: notifier for s in subs}, clock=clock)


QUIET = {"start": "22:00", "end": "07:00", "timezone": "Australia/Sydney"}


@pytest.mark.parametrize(("changed", "says"), [
    ({"enabled": False}, "subscription ops is disabled"),
    ({"topics": ["scam"]}, "does not cover topic 'outage'"),
    ({"min_severity": "critical"}, "severity major is below the min_severity critical"),
])
async def test_a_held_delivery_the_subscription_no_longer_wants_is_cancelled_not_sent(
    changed: dict[str, Any], says: str,
) -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub(quiet_hours=QUIET)], {"ops": n}, now=NIGHT)
    [held] = await d.dispatch(alert(0))
    assert held.status == "held"
    clock.now = MORNING
    [cancelled] = await restarted([sub(quiet_hours=QUIET, **changed)], log, clock, n).retry_due()
    assert cancelled.status == "cancelled" and says in (cancelled.error or "")
    assert cancelled.next_attempt_at is None and log.records[held.id] == cancelled
    assert n.sent == []


@pytest.mark.parametrize(("changed", "status", "sent"), [
    # min_severity raised since: the open went out, so its all clear still does.
    ({"min_severity": "critical"}, "sent", ["a1:0:ops", "a1:1:ops"]),
    # disabled since: nothing more goes to it, not even the all clear.
    ({"enabled": False}, "cancelled", ["a1:0:ops"]),
])
async def test_a_pending_all_clear_to_one_told_of_the_alert_follows_the_subscription_as_it_is_now(
        changed: dict[str, Any], status: str, sent: list[str]) -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub()], {"ops": n}, policy=RetryPolicy(inline_attempts=1))
    assert (await d.dispatch(alert(0)))[0].status == "sent"
    n.failures = [RetriableDeliveryError("503")]
    [pending] = await d.dispatch(alert(1, status="resolved"))
    assert pending.status == "pending"
    clock.now = pending.next_attempt_at  # type: ignore[assignment]
    [done] = await restarted([sub(**changed)], log, clock, n).retry_due()
    assert done.status == status and [k for k, _ in n.sent] == sent
    if status == "cancelled":
        assert "disabled" in (done.error or "")


async def test_a_held_all_clear_to_one_never_told_is_cancelled_when_severity_no_longer_matches() -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub(quiet_hours=QUIET)], {"ops": n}, now=NIGHT)
    await d.dispatch(alert(0))
    [waiting] = await d.dispatch(alert(1, status="resolved"))
    assert waiting.status == "held" and waiting.reason == "with_alert"
    clock.now = MORNING
    results = await restarted([sub(quiet_hours=QUIET, min_severity="critical")], log, clock, n).retry_due()
    assert {r.id: r.status for r in results} == {"a1:0:ops": "cancelled", "a1:1:ops": "cancelled"}
    assert n.sent == []


async def test_a_new_all_clear_reaches_one_told_of_the_alert_after_min_severity_was_raised() -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub("ops"), sub("late")], {"ops": n, "late": n})
    await d.dispatch(alert(0, severity="minor", id="m1"))
    d2 = restarted([sub("ops", min_severity="major"), sub("late", min_severity="major")], log, clock, n)
    log.records.pop("m1:0:late")  # "late" was never told of it
    [sent] = await d2.dispatch(alert(1, severity="minor", id="m1", status="resolved"))
    assert sent.subscription == "ops" and sent.status == "sent"
    assert await d2.dispatch(alert(2, severity="minor", id="m1", status="update")) == []


async def test_a_digest_drops_what_the_subscription_no_longer_covers() -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub(digest="1h", topics=["*"])], {"ops": n})
    clock.now = NOON + timedelta(minutes=10)
    await d.dispatch(alert(0, id="a1", topic="outage"))
    await d.dispatch(alert(0, id="b1", topic="scam"))
    clock.now = NOON + timedelta(hours=1)
    results = await restarted([sub(digest="1h", topics=["scam"])], log, clock, n).retry_due()
    assert {r.id: r.status for r in results} == {"a1:0:ops": "cancelled", "b1:0:ops": "sent"}
    [(_, alerts)] = n.sent
    assert [a.id for a in alerts] == ["b1"]


# Reopened alerts: the lifecycle re-opens an alert whose spike comes back within its cooldown
# (same id, status "open", a later sequence).


async def test_an_all_clear_to_one_who_last_heard_the_alert_was_over_is_not_sent() -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub(quiet_hours=QUIET)], {"ops": n})
    assert [r.status for r in await d.dispatch(alert(0))] == ["sent"]
    assert [r.status for r in await d.dispatch(alert(1, status="resolved"))] == ["sent"]
    clock.now = NIGHT
    [held] = await d.dispatch(alert(2))  # back at 23:00: the reopen waits for the morning
    assert held.status == "held" and held.reason == "quiet_hours"
    clock.now = NIGHT + timedelta(minutes=10)
    # Over again at 23:10: this subscriber was never told it was back, so there is nothing to clear.
    results = {r.id: r for r in await d.dispatch(alert(3, status="resolved"))}
    assert results["a1:3:ops"].status == "superseded"
    assert "not told it was back" in (results["a1:3:ops"].error or "")
    # ...and the reopen it makes moot is not sent in the morning either.
    assert log.records["a1:2:ops"].status == "superseded" and log.records["a1:2:ops"].next_attempt_at is None
    clock.now = MORNING
    assert await d.retry_due() == []
    assert [k for k, _ in n.sent] == ["a1:0:ops", "a1:1:ops"]


async def test_an_all_clear_to_one_told_the_alert_was_back_goes_through_quiet_hours() -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub(quiet_hours=QUIET, min_severity="major")], {"ops": n})
    await d.dispatch(alert(0))
    await d.dispatch(alert(1, status="resolved"))
    clock.now = NIGHT - timedelta(hours=2)  # 21:00: back, and told at once
    assert [r.status for r in await d.dispatch(alert(2))] == ["sent"]
    clock.now = NIGHT
    # Over again at 23:00: they believe it is open, so the all clear goes now, whatever its severity.
    [resolved] = await d.dispatch(alert(3, status="resolved", severity="minor"))
    assert resolved.status == "sent"
    assert [k for k, _ in n.sent] == ["a1:0:ops", "a1:1:ops", "a1:2:ops", "a1:3:ops"]


async def test_a_due_all_clear_to_one_who_last_heard_the_alert_was_over_is_not_sent() -> None:
    # e.g. a retry of an all clear left in the log by an earlier version of the worker.
    n = FakeNotifier()
    d, log, clock, _ = make([sub()], {"ops": n})
    await d.dispatch(alert(0))
    await d.dispatch(alert(1, status="resolved"))
    await log.put(DeliveryRecord.new(alert(3, status="resolved"), sub(), NOON).but(
        attempts=1, error="503", next_attempt_at=NOON))
    [record] = await d.retry_due()
    assert record.status == "superseded" and "not told it was back" in (record.error or "")
    assert [k for k, _ in n.sent] == ["a1:0:ops", "a1:1:ops"]


async def test_a_cooldown_does_not_hold_the_reopen_of_an_alert_the_subscriber_was_sent() -> None:
    n = FakeNotifier()
    d, log, clock, _ = make([sub(cooldown="1h", topics=["*"])], {"ops": n})
    assert [r.status for r in await d.dispatch(alert(0))] == ["sent"]
    clock.now = NOON + timedelta(minutes=10)
    assert [r.status for r in await d.dispatch(alert(1, status="resolved"))] == ["sent"]
    clock.now = NOON + timedelta(minutes=15)
    # "Spike back in": the sequel of what they were just told, not a new episode of the topic.
    [reopen] = await d.dispatch(alert(2))
    assert reopen.status == "sent" and reopen.reason is None
    # The cooldown still holds the reopened alert's updates, and the topic's other alerts.
    clock.now = NOON + timedelta(minutes=20)
    [update] = await d.dispatch(alert(3, status="update"))
    assert update.reason == "cooldown" and update.next_attempt_at == NOON + timedelta(minutes=75)
    [other] = await d.dispatch(alert(0, id="a2"))
    assert other.reason == "cooldown"
    # A reopen of an alert this subscriber was never sent is a new episode to it: held.
    [unheard] = await d.dispatch(alert(2, id="a3"))
    assert unheard.reason == "cooldown"
    assert [k for k, _ in n.sent] == ["a1:0:ops", "a1:1:ops", "a1:2:ops"]

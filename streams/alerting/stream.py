"""Counting, spike detection, alerts and delivery inside the stream worker.

How it fits together::

    index-mentions ──(indexed mentions of a batch)──► CountRecord deltas ──► mentions.counts
                                                    (keyed and partitioned by topic)
    tick timer ──(per owned partition, every few seconds)──► CountRecord ticks ──┘
                                                                                 │
    count-and-detect (one per partition):                                        ▼
        delta  → windowed tables: per-window counts per topic, per topic × source,
                 distinct authors per topic (Faust tumbling windows on the mentions' time);
                 each window keeps its mention ids, so a mention is counted once however
                 often it is indexed (a re-read batch, a retried bulk, a repeated post);
                 ids and authors are sets whose changelogs take only what each record adds
        tick   → every window that ended before (now − grace) is closed for every topic this
                 partition owns, a quiet window as a zero: detector → lifecycle → alert
                 events → the alerts topic (acked), then the series state is saved in the
                 ``alert-series`` table (its changelog survives restarts)
    notify-subscribers: alerts topic → earful-alerts (id = alert id) → Dispatcher → receivers
                 (an event is tried again through any outage until it is stored and its
                 deliveries recorded: acknowledging it on an error would lose it; one the
                 search server refuses outright is still delivered, then set aside in
                 mentions.rejected with its reason, as is one that keeps failing on a bug,
                 so the alerts after it still go out)
    retry timer (the alerts partition's owner): held and failed deliveries that have come due

Windows close on the worker's clock, not on the next mention: a topic that goes quiet
still gets its zeros and its "all clear". Ticks pause while the index agent is working
through a backlog, so a window is not closed before its mentions were counted.

Alert side effects (alerts topic, then Elasticsearch and subscribers) happen before the
series state is saved. A worker that dies in between recomputes the same alert (same id,
same sequence) after restart: the alert document is overwritten and the delivery log's
idempotency key stops a second message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
import httpx
from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError

from schemas.records import Alert, AlertSample, Rejected
from streams.agents import exit_holding
from streams.alerting import terms
from streams.alerting.counting import (
    CountRecord,
    count_records,
    partition_for,
    uncounted,
    window_start,
)
from streams.alerting.delivery import Dispatcher, ElasticsearchDeliveryLog
from streams.alerting.lifecycle import AlertTracker
from streams.alerting.subscriptions import parse_subscriptions
from streams.alerting.watch import AlertingConfig, Watch, series_key
from streams.alerting.windowsets import WindowedSet
from streams.settings import Settings, es_client_kwargs
from streams.sinks.elasticsearch import make_client

__all__ = ["AlertingStream", "register"]

log = logging.getLogger(__name__)

SAMPLE_LOOKBACK_WINDOWS = 5
BACKGROUND = timedelta(hours=24)


class MentionEvidence:
    """Sample mentions and top terms of a spike, read back from the mentions index."""

    def __init__(self, client: AsyncElasticsearch, index: str, max_samples: int) -> None:
        self.client = client
        self.index = index
        self.max_samples = max_samples

    async def _texts(self, filters: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
        try:
            resp = await self.client.search(
                index=self.index, size=size, query={"bool": {"filter": filters}},
                sort=[{"created_at": {"order": "desc"}}],
                source_includes=["id", "source", "text", "url", "created_at"],
            )
        except NotFoundError:
            return []
        return [hit["_source"] for hit in resp["hits"]["hits"]]

    async def __call__(self, topic: str, source: str | None, start: datetime,
                       end: datetime) -> tuple[list[AlertSample], list[str]]:
        scope: list[dict[str, Any]] = [{"term": {"tags": topic}}]
        if source is not None:
            scope.append({"term": {"source": source}})
        since = start - (end - start) * SAMPLE_LOOKBACK_WINDOWS
        try:
            spike = await self._texts(
                [*scope, {"range": {"created_at": {"gte": since.isoformat(), "lt": end.isoformat()}}}], 300)
            before = await self._texts(
                [*scope, {"range": {"created_at": {"gte": (since - BACKGROUND).isoformat(),
                                                   "lt": since.isoformat()}}}], 500)
        except Exception as exc:  # noqa: BLE001 - an alert without evidence beats no alert
            log.warning("no sample mentions for the %s alert: search failed: %s", topic, exc)
            return [], []
        samples = [AlertSample.model_validate(doc) for doc in spike[: self.max_samples]]
        background = terms.term_counts(doc["text"] for doc in before) if before else None
        return samples, terms.top_terms([doc["text"] for doc in spike], background)


class AlertingStream:
    """The alerting agents of one worker; ``on_indexed`` is the index agent's hook."""

    def __init__(self, app: faust.App, settings: Settings,
                 topics: Callable[[], Mapping[str, str | None]],
                 taxonomy_version: Callable[[], str] | None = None) -> None:
        self.app = app
        self.settings = settings
        #: the taxonomy's topics and their parents (it may be reloaded while the worker runs)
        self.topics = topics
        #: the tagger's version: with the alerting section, the rules an alert is raised under
        self.taxonomy_version = taxonomy_version or (lambda: "")
        self.partitions = settings.raw_partitions
        self.window = settings.alert_window_seconds
        config = settings.config()
        self._alerting_section = config.get("alerting")
        self._configure(self.taxonomy_version())
        self.subscriptions = parse_subscriptions(config)
        #: set by the worker: the index agent's progress (ticks wait while it has a backlog)
        self.ingest: Any = None
        self.late = 0
        self._es: AsyncElasticsearch | None = None
        self._dispatcher: Dispatcher | None = None

        self.counts_topic = app.topic(settings.topic_counts, key_type=str, value_type=CountRecord,
                                      partitions=self.partitions)
        self.alerts_topic = app.topic(settings.topic_alerts, key_serializer="raw", value_serializer="raw",
                                      partitions=1)
        self.rejected_topic = app.topic(settings.topic_rejected, key_serializer="raw", value_serializer="raw",
                                        partitions=1)
        expires = timedelta(seconds=max(self.window * 180, 3 * 3600))
        window_field = CountRecord.window
        self.topic_counts = app.Table("topic-window-counts", default=int, partitions=self.partitions) \
            .tumbling(self.window, expires=expires).relative_to_field(window_field)
        self.source_counts = app.Table("topic-source-window-counts", default=int, partitions=self.partitions) \
            .tumbling(self.window, expires=expires).relative_to_field(window_field)
        sets = {"window": self.window, "expires": expires, "field": window_field, "partitions": self.partitions}
        self.topic_authors = WindowedSet(app, "topic-window-author-set", **sets)
        self.topic_ids = WindowedSet(app, "topic-window-mention-set", **sets)
        self.series = app.Table("alert-series", partitions=self.partitions)
        self._max_age = expires.total_seconds() - self.window
        self._register()

    def _configure(self, taxonomy_version: str) -> None:
        self.cfg = AlertingConfig.from_config(self._alerting_section, window_seconds=self.window,
                                              kibana_url=self.settings.kibana_url,
                                              taxonomy_version=taxonomy_version)
        self.watch = Watch(self.cfg)
        self._configured_for = taxonomy_version

    def _follow_taxonomy(self) -> None:
        """A reloaded taxonomy changes the rules: alerts raised from now on say so."""
        current = self.taxonomy_version()
        if current != self._configured_for:
            self._configure(current)

    # -- clients -------------------------------------------------------------------------

    @property
    def es(self) -> AsyncElasticsearch:
        if self._es is None:
            self._es = make_client(es_client_kwargs(self.settings))
        return self._es

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self.subscriptions,
                                          ElasticsearchDeliveryLog(self.es, self.settings.index_deliveries),
                                          policy=self.cfg.delivery.policy())
        return self._dispatcher

    # -- the index agent's side ----------------------------------------------------------

    async def on_indexed(self, docs: list[dict[str, Any]], event: Any = None) -> None:
        """Count the batch's mentions; wait for the broker's acks before the batch is acked."""
        futures = []
        since = time.time() - self._max_age
        for record in count_records(docs, self.window, self.topics(), since=since):
            futures.append(await self.counts_topic.send(
                key=record.topic, value=record, partition=partition_for(record.topic, self.partitions)))
        await asyncio.gather(*futures)

    def _ingest_caught_up(self) -> bool:
        if self.ingest is None:
            return True
        settings = self.settings
        return bool(self.ingest.caught_up(batch_size=settings.batch_size, batch_within=settings.batch_within,
                                          warm_up=settings.alert_grace_seconds))

    # -- agents and timers ---------------------------------------------------------------

    def _register(self) -> None:
        app = self.app

        @app.timer(self.settings.alert_tick_seconds)
        async def tick() -> None:
            if not self._ingest_caught_up():
                return  # a backlog is being indexed: its windows are not complete yet
            now = time.time()
            owned = [tp.partition for tp in app.assignor.assigned_actives()
                     if tp.topic == self.settings.topic_counts]
            until = now - self.settings.alert_grace_seconds
            for partition in owned:
                await self.counts_topic.send(value=CountRecord(kind="tick", until=until, now=now),
                                             partition=partition)

        @app.agent(self.counts_topic, name="count-and-detect")
        async def count_and_detect(stream: faust.StreamT[CountRecord]) -> None:
            async for event in stream.events():
                record: CountRecord = event.value
                if record.kind == "delta":
                    self._count(record)
                elif record.kind == "tick":
                    await self._close(event.message.partition, record)

        @app.agent(self.alerts_topic, name="notify-subscribers")
        async def notify(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                try:
                    outcome = await self._handle_alert_event(event)
                except asyncio.CancelledError:
                    outcome = STOPPING
                if outcome is not None:  # acknowledging it now would lose it: the next worker handles it
                    exit_holding([event], 0, f"the worker is stopping before the alert event at offset "
                                             f"{event.message.offset} was stored and delivered")

        @app.timer(self.cfg.delivery.retry_every.total_seconds())
        async def retry_deliveries() -> None:
            # On the worker that sends the alert events (the alerts topic has one partition):
            # the dispatcher then keeps a retry and the same alert's next event from crossing.
            def owner() -> bool:
                return any(tp.topic == self.settings.topic_alerts for tp in app.assignor.assigned_actives())

            if self.subscriptions and owner():
                await self.dispatcher.retry_due(still_mine=owner)

        @app.on_before_shutdown.connect
        async def close_clients(app: faust.App, **kwargs: Any) -> None:
            if self._dispatcher is not None:
                await self._dispatcher.aclose()
            if self._es is not None:
                await self._es.close()

        @app.timer(60.0)
        async def report_late() -> None:
            if self.late:
                log.warning("%d mentions arrived after their window had closed: indexed, not counted "
                            "(raise EARFUL_ALERT_GRACE_SECONDS if sources deliver late)", self.late)
                self.late = 0

    def _unseen(self, record: CountRecord) -> dict[str, int]:
        """Per source, the record's mentions not yet counted in its window (now remembered)."""
        seen = self.topic_ids.members(record.topic) if record.ids else set()
        added, per_source = uncounted(record, seen)
        if added:
            self.topic_ids.add(record.topic, added, known=seen)
        return per_source

    def _count(self, record: CountRecord) -> None:
        state = self.series.get(record.topic)
        by_source = self._unseen(record)
        if state and record.window < float(state["closed_until"]):
            self.late += sum(by_source.values())  # a re-read of counted mentions is not late
            return
        if not by_source:
            return  # every mention of it was counted before
        self.topic_counts[record.topic] += sum(by_source.values())
        for source, n in by_source.items():
            self.source_counts[series_key(record.topic, source)] += n
        if record.authors:
            self.topic_authors.add(record.topic, record.authors)
        sources = set(state.get("sources", ())) if state else set()
        if state is not None and not sources.issuperset(record.by_source):
            self.series[record.topic] = {**state, "sources": sorted(sources | set(record.by_source))}
        elif not state:
            # First sight of the topic: its windows are watched from this one on.
            self.series[record.topic] = {**self.watch.new_state(record.window),
                                         "sources": sorted(record.by_source)}

    def _value(self, table: Any, key: str, start: float) -> float:
        return float(table.relative_to(start + self.window / 2)[key].value() or 0)

    def _authors(self, topic: str, start: float) -> int:
        return self.topic_authors.size(topic, start)

    async def _close(self, partition: int, tick: CountRecord) -> None:
        self._follow_taxonomy()
        horizon = window_start(tick.until, self.window)
        now = datetime.fromtimestamp(tick.now, tz=UTC)
        evidence = MentionEvidence(self.es, self.settings.index_mentions, self.cfg.lifecycle.max_samples)
        mine = {t for t in self.topics() if partition_for(t, self.partitions) == partition}
        mine |= {k for k in self.series if "\x1f" not in k and partition_for(k, self.partitions) == partition}
        for topic in sorted(mine):
            state = dict(self.series.get(topic) or {**self.watch.new_state(horizon - self.window), "sources": []})
            # Windows older than the tables keep are gone: resume at the oldest one still there.
            state["closed_until"] = max(float(state["closed_until"]), horizon - self._max_age)
            series = [(topic, None, self.topic_counts, state)]
            for source in state.get("sources", ()):
                key = series_key(topic, source)
                known = self.series.get(key)
                # With per-source alerts turned off since, a source's alert still open is followed
                # until its all clear, rather than left open for good.
                if not self.cfg.per_source and not self._still_open(known):
                    continue
                sub = dict(known or self.watch.new_state(float(state["closed_until"])))
                series.append((topic, source, self.source_counts, sub))
            for topic_, source, table, st in series:
                key = series_key(topic_, source)
                due = self.watch.due(st, horizon)
                if not due:
                    continue
                windows = [(start, self._value(table, key, start),
                            self._authors(key, start) if source is None else None) for start in due]
                new_state, alerts = await self.watch.close(st, topic_, source, windows, now, evidence)
                for alert in alerts:
                    await self._publish(alert)
                if source is None:
                    new_state["sources"] = st.get("sources", [])
                self.series[key] = new_state

    def _still_open(self, state: Mapping[str, Any] | None) -> bool:
        if not state or not state.get("tracker"):
            return False
        return bool(AlertTracker.from_state(self.cfg.lifecycle, state["tracker"]).open_alert_ids())

    async def _publish(self, alert: Alert) -> None:
        log.info("alert %s %s: topic %s%s, %s, observed %.0f vs expected %.1f", alert.id, alert.status,
                 alert.topic, f" on {alert.source}" if alert.source else "", alert.severity,
                 alert.observed, alert.expected)
        future = await self.alerts_topic.send(key=alert.id.encode(), value=alert.model_dump_json().encode())
        await future  # acked before the series state moves on

    async def _handle_alert_event(self, event: Any) -> str | None:
        """Store and deliver one alert event; None once done (or set aside), else ``STOPPING``."""
        def stopping() -> bool:
            return bool(self.app.should_stop)

        backoff = self.settings.es_retry_max_backoff
        try:
            alert = Alert.model_validate_json(event.value)
        except ValueError as exc:
            what, outcome = f"alerts record at offset {event.message.offset}", f"not an alert: {exc}"[:500]
        else:
            what = f"alert {alert.id} #{alert.sequence}"
            outcome = await until_done(lambda: self._store_and_deliver(alert), what, stopping=stopping,
                                       max_backoff=backoff)
        if outcome in (None, STOPPING):
            return outcome
        # Set aside with its reason, so that the alerts after it are not held behind it.
        log.error("%s could not be stored or delivered: %s; set aside in %s", what, outcome,
                  self.settings.topic_rejected)
        reason = outcome
        return await until_done(lambda: self._set_aside(event, reason), f"{what} (set aside)", stopping=stopping,
                                max_backoff=backoff, bug_tries=None)

    async def _set_aside(self, event: Any, reason: str) -> None:
        message = event.message
        record = Rejected(reason=f"alert event not stored or delivered: {reason}",
                          payload=bytes(event.value).decode("utf-8", errors="replace"),
                          topic=message.topic, partition=message.partition, offset=message.offset)
        future = await self.rejected_topic.send(key=None, value=record.model_dump_json().encode())
        await future

    async def _store_and_deliver(self, alert: Alert) -> None:
        refused: ApiError | None = None
        try:
            await self._index_alert(alert)
        except ApiError as exc:
            if not refused_for_good(exc):
                raise
            refused = exc  # the dashboards miss it, but the subscribers still hear of it
        if self.subscriptions:
            await self.dispatcher.dispatch(alert)
        if refused is not None:
            raise refused

    async def _index_alert(self, alert: Alert) -> None:
        """The alert document follows the lifecycle; a late redelivery never rolls it back."""
        try:
            current = await self.es.get(index=self.settings.index_alerts, id=alert.id,
                                        source_includes=["sequence"])
            if current["_source"].get("sequence", -1) > alert.sequence:
                return
        except NotFoundError:
            pass
        doc = alert.model_dump(mode="json")
        await self.es.index(index=self.settings.index_alerts, id=alert.id, document=doc, refresh="wait_for")


#: how often an error that is neither an outage nor a refusal (a bug) is tried before the
#: event is set aside, so that one bad event does not hold every later alert
BUG_TRIES = 5


def refused_for_good(exc: BaseException) -> bool:
    """The search server refused the request itself (a 4xx other than auth, timeout or too
    many requests, e.g. a document its strict mapping rejects): trying again cannot help."""
    return isinstance(exc, ApiError) and 400 <= exc.status_code < 500 and exc.status_code not in (401, 403, 408, 429)


def outage(exc: BaseException) -> bool:
    """A server out of reach, busy, overloaded or not letting us in yet: it passes."""
    if isinstance(exc, ApiError):
        return not refused_for_good(exc)
    return isinstance(exc, (TransportError, OSError, asyncio.TimeoutError, httpx.TransportError))


async def until_done(work: Callable[[], Awaitable[None]], what: str, *, stopping: Callable[[], bool],
                     max_backoff: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                     bug_tries: int | None = BUG_TRIES) -> str | None:
    """Run ``work`` until it succeeds, backing off between tries.

    Returns None when done, ``STOPPING`` when the worker stops first, or the reason the event
    cannot be handled: refused by the search server, or still failing after ``bug_tries``
    tries with an error that is no outage. (``bug_tries=None``: try whatever the error.)

    An alert event is acknowledged once its handler returns, by an error too, and the
    consumer then commits past it: one the search server could not store, or whose
    deliveries could not be recorded, would be lost. So it is tried again through any outage
    (the alert's sequence and the deliveries' idempotency keys make a second try safe) for as
    long as the worker runs, and the alerts partition waits behind it.
    """
    delay, tries = 1.0, 0
    while True:
        try:
            await work()
            if tries:
                log.info("%s done after %d failed tries", what, tries)
            return None
        except Exception as exc:
            tries += 1
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if bug_tries is not None and refused_for_good(exc):
                return f"refused by the search server: {reason}"
            if bug_tries is not None and not outage(exc) and tries >= bug_tries:
                log.exception("%s failed %d times", what, tries)
                return f"failed {tries} times: {reason}"
            if stopping():
                log.warning("%s: %s", what, reason)
                return STOPPING
            log.warning("%s failed (try %d): %s; trying again in %.0f s", what, tries, reason, delay)
        await sleep(delay)
        if stopping():
            return STOPPING
        delay = min(delay * 2, max_backoff)


STOPPING = "the worker is stopping"


def register(app: faust.App, settings: Settings,
             topics: Callable[[], Mapping[str, str | None]] | None = None,
             taxonomy_version: Callable[[], str] | None = None) -> AlertingStream:
    """Add the alerting agents to ``app``.

    ``topics`` gives the taxonomy's topics with their parents: each is watched from the start
    (quiet topics included), and a mention counts for its most specific topics only.
    ``taxonomy_version`` gives the tagger's version, which each alert's ``config_version`` names.
    """
    return AlertingStream(app, settings, topics or dict, taxonomy_version)

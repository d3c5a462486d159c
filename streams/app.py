"""The Faust app: one per worker process, configured from Settings."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP

from streams.settings import Settings

log = logging.getLogger(__name__)


class Consumer(kafka_driver.Consumer):
    """Faust's Kafka consumer, which rewinds the partitions that have no committed offset and
    never commits past a message still in flight (see ``_new_offset``).

    When a rebalance or a table recovery ends, Faust discards what it fetched in the meantime
    and seeks every stream partition back to its committed offset (``perform_seek``). A
    partition with no committed offset yet (a new consumer group, or a partition none of whose
    records has been committed) is not sought at all. The records fetched before the seek
    were then skipped for good: a restarted worker never indexed them. Such a partition is now
    sought to its earliest offset, which is what ``consumer_auto_offset_reset="earliest"``
    asks for. Reading a record twice is safe: mentions are stored and counted by id.
    """

    async def perform_seek(self) -> None:
        await super().perform_seek()
        if self.app.conf.consumer_auto_offset_reset != "earliest":
            return
        uncommitted = [tp for tp in self.assignment()
                       if not self._is_changelog_tp(tp) and not self._committed_offset.get(tp)]
        if not uncommitted:
            return
        try:
            for tp, offset in (await self.earliest_offsets(*uncommitted)).items():
                await self.seek(tp, offset)
        except IllegalStateError as exc:  # revoked meanwhile: the next assignment seeks again
            log.warning("could not rewind partitions without a committed offset: %s", exc)

    #: a partition whose commits have waited this long on one message is logged, then as often
    HELD_WARNING_SECONDS = 300.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: per partition whose commits wait: (offset waited on, since, last warned)
        self._held_since: dict[TP, tuple[int, float, float]] = {}

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``, never past a message still being processed.

        Faust commits the first run of consecutive acknowledged offsets. It checks for a message
        still in flight before that run only when the partition has a committed offset, and then
        one offset short (faust-streaming #606): with two actors, one actor's batch could be
        committed while the other's earlier batch was still on its way to the index, and lost
        if the worker then died. Here a commit waits while any message of ``tp`` older than the
        first acknowledged one is still unacknowledged.
        """
        acked = self._acked[tp]
        if acked:
            first_acked = min(acked)
            waiting = [m.offset for m in list(self._unacked_messages)
                       if m.tp == tp and m.offset < first_acked and not m.acked]
            if waiting:
                self._held(tp, min(waiting))
                return None
        self._held_since.pop(tp, None)
        return super()._new_offset(tp)

    def _held(self, tp: TP, offset: int) -> None:
        """Say so when a partition's commits have waited on one message for long: a batch that
        never finishes would otherwise hold them without a word."""
        now = time.monotonic()
        held_offset, since, warned = self._held_since.get(tp, (offset, now, now))
        if held_offset != offset:
            held_offset, since, warned = offset, now, now
        if now - since >= self.HELD_WARNING_SECONDS and now - warned >= self.HELD_WARNING_SECONDS:
            log.warning("commits of %s have waited %.0fs on offset %d, still being processed; "
                        "nothing after it is committed until it is done", tp, now - since, offset)
            warned = now
        self._held_since[tp] = (held_offset, since, warned)


class Transport(kafka_driver.Transport):
    Consumer = Consumer


def create_app(settings: Settings) -> faust.App:
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    broker = ";".join(f"kafka://{server}" for server in settings.kafka_servers)
    app = faust.App(
        settings.app_id,
        broker=broker,
        store="memory://",
        autodiscover=False,
        # Tables are co-partitioned with mentions.raw, so they share its partition count.
        topic_partitions=settings.raw_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_commit_interval=1.0,
        producer_acks=-1,
        web_enabled=False,
        datadir=str(settings.data_dir / "worker"),
    )
    app.transport = Transport(app.conf.broker_consumer, app)
    return app

"""The worker's consumer: partitions with no committed offset rewound, no commit past a message in flight."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP, Message

from streams import app as app_module
from streams.app import Consumer, create_app
from streams.settings import Settings


class FakeKafka:
    """Stands in for the consumer thread that talks to the broker."""

    def __init__(self, committed: dict[TP, int | None], earliest: int) -> None:
        self.committed = committed
        self.earliest = earliest
        self.seeks: dict[TP, int] = {}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        # As aiokafka does: only a partition with a committed offset above 0 is sought.
        for tp, offset in self.committed.items():
            if offset:
                self.seeks[tp] = offset
        return dict(self.committed)

    def assignment(self) -> set[TP]:
        return set(self.committed)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest for tp in tps}

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks[tp] = offset


def _consumer(tmp_path: Path, committed: dict[TP, int | None], earliest: int = 0,
              **conf: Any) -> tuple[Consumer, FakeKafka]:
    settings = Settings(data_dir=tmp_path)
    app = create_app(settings)
    app.Table("window-counts", default=int)  # its changelog is the recovery's, not ours to seek
    for key, value in conf.items():
        setattr(app.conf, key, value)
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    kafka = FakeKafka(committed, earliest)
    consumer._thread = kafka  # type: ignore[assignment]
    return consumer, kafka


def test_a_partition_without_a_committed_offset_is_sought_to_its_earliest_offset(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    raw = settings.topic_raw
    changelog = TP(f"{settings.app_id}-window-counts-changelog", 1)
    committed = {TP(raw, 0): 7, TP(raw, 1): None, TP(raw, 2): 0, changelog: None}
    consumer, kafka = _consumer(tmp_path, committed, earliest=3)
    asyncio.run(consumer.perform_seek())
    # raw 0 goes back to its committed offset (Faust); 1 and 2 have none (0 is "none" to aiokafka)
    # and go back to the earliest offset; the table's changelog is left to the recovery.
    assert kafka.seeks == {TP(raw, 0): 7, TP(raw, 1): 3, TP(raw, 2): 3}


def test_with_the_latest_reset_policy_nothing_more_is_sought(tmp_path: Path) -> None:
    raw = Settings(data_dir=tmp_path).topic_raw
    consumer, kafka = _consumer(tmp_path, {TP(raw, 0): 7, TP(raw, 1): None},
                                consumer_auto_offset_reset="latest")
    asyncio.run(consumer.perform_seek())
    assert kafka.seeks == {TP(raw, 0): 7}


def _message(tp: TP, offset: int) -> Message:
    return Message(tp.topic, tp.partition, offset, 0.0, 0, None, None, b"page", None, tp=tp)


def _read(consumer: Consumer, tp: TP, offsets: range) -> list[Message]:
    """Messages of ``tp`` handed to the agents, not yet acknowledged (kept alive by the caller)."""
    messages = [_message(tp, offset) for offset in offsets]
    for message in messages:
        consumer.track_message(message)
    return messages


def _ack(consumer: Consumer, messages: list[Message]) -> None:
    for message in messages:  # the bookkeeping of Consumer.ack, for a topic with acks enabled
        message.acked = True
        consumer._acked_index[message.tp].add(message.offset)
        consumer._acked[message.tp].append(message.offset)


def test_no_commit_past_a_batch_still_on_its_way_on_a_new_partition(tmp_path: Path) -> None:
    tp = TP(Settings(data_dir=tmp_path).topic_raw, 0)
    consumer, _ = _consumer(tmp_path, {tp: None})
    first = _read(consumer, tp, range(0, 10))   # one actor's batch, on its way to the index
    second = _read(consumer, tp, range(10, 20))  # the other actor's batch, stored and acknowledged
    _ack(consumer, second)
    assert consumer._filter_committable_offsets([tp]) == {}
    _ack(consumer, first)
    assert consumer._filter_committable_offsets([tp]) == {tp: 20}


def test_no_commit_past_the_message_right_after_the_committed_offset(tmp_path: Path) -> None:
    tp = TP(Settings(data_dir=tmp_path).topic_raw, 0)
    consumer, _ = _consumer(tmp_path, {tp: 5})
    consumer._committed_offset[tp] = 5  # the next message to read is offset 5
    first = _read(consumer, tp, range(5, 6))
    second = _read(consumer, tp, range(6, 10))
    _ack(consumer, second)
    assert consumer._filter_committable_offsets([tp]) == {}
    _ack(consumer, first)
    assert consumer._filter_committable_offsets([tp]) == {tp: 10}


def test_acknowledged_in_order_commits_as_before(tmp_path: Path) -> None:
    tp = TP(Settings(data_dir=tmp_path).topic_raw, 0)
    consumer, _ = _consumer(tmp_path, {tp: None})
    first = _read(consumer, tp, range(0, 10))
    later = _read(consumer, tp, range(10, 20))  # read, still in flight: no reason to hold 0..9
    _ack(consumer, first)
    assert consumer._filter_committable_offsets([tp]) == {tp: 10}
    _ack(consumer, later)
    assert consumer._filter_committable_offsets([tp]) == {tp: 20}


def test_commits_held_for_long_on_one_message_are_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    monkeypatch.setattr(app_module.time, "monotonic", lambda: now[0])
    tp = TP(Settings(data_dir=tmp_path).topic_raw, 0)
    consumer, _ = _consumer(tmp_path, {tp: None})
    stuck = _read(consumer, tp, range(0, 1))
    _ack(consumer, _read(consumer, tp, range(1, 5)))
    with caplog.at_level(logging.WARNING, logger="streams.app"):
        for _ in range(11):  # a commit pass a minute for ten minutes
            assert consumer._filter_committable_offsets([tp]) == {}
            now[0] += 60
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "waited 300s on offset 0" in lines[0]
    _ack(consumer, stuck)
    assert consumer._filter_committable_offsets([tp]) == {tp: 5}
    assert consumer._held_since == {}

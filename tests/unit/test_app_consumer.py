"""The worker's consumer seeks a partition with no committed offset back to its earliest offset."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faust.types import TP

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

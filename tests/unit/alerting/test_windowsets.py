"""Per-window sets on Faust tables, run in Faust's agent test context (no broker)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import faust
import pytest

from streams.alerting.counting import CountRecord
from streams.alerting.windowsets import WindowedSet

WINDOW = 60.0


class Harness:
    """An app with one WindowedSet and an agent that adds each record's ids to it."""

    def __init__(self, name: str) -> None:
        self.app = faust.App(name, broker="kafka://localhost:1", store="memory://")
        self.set = WindowedSet(self.app, "mentions", window=WINDOW, expires=timedelta(hours=3),
                               field=CountRecord.window, partitions=1)
        self.seen: list[tuple[list[str], list[str], int]] = []
        self.written: dict[str, list[tuple[Any, Any]]] = {"heads": [], "parts": []}
        for name_, wrapper in (("heads", self.set.heads), ("parts", self.set.parts)):
            table = wrapper.table
            original = table.send_changelog

            def spy(partition: Any, key: Any, value: Any, *args: Any, _log: list = self.written[name_],
                    _send: Any = original, **kwargs: Any) -> Any:
                _log.append((key, value))
                return _send(partition, key, value, *args, **kwargs)

            table.send_changelog = spy  # type: ignore[method-assign]
        topic = self.app.topic(f"{name}-counts", value_type=CountRecord)

        @self.app.agent(topic)
        async def count(stream: Any) -> Any:
            async for record in stream:
                added = self.set.add(record.topic, [i for ids in record.ids.values() for i in ids])
                self.seen.append((added, sorted(self.set.members(record.topic)),
                                  self.set.size(record.topic, record.window)))
                yield added

        self.agent = count

    def run(self, records: list[CountRecord]) -> None:
        async def main() -> None:
            self.app.finalize()
            self.app.flow_control.resume()
            async with self.agent.test_context() as agent:
                for record in records:
                    await agent.put(record)

        asyncio.run(main())


def _record(ids: list[str], window: float = 0.0, topic: str = "outage") -> CountRecord:
    return CountRecord(kind="delta", topic=topic, window=window, ids={"mastodon": ids})


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Harness:
    return Harness(f"windowsets-{request.node.name}")


def test_members_accumulate_per_key_and_window_and_only_new_ones_are_added(harness: Harness) -> None:
    harness.run([
        _record(["a", "b"]),
        _record(["b", "c", "c"]),            # b was there; c twice in one record is one member
        _record(["a"], window=WINDOW),       # the next window starts empty
        _record(["a", "b", "c"]),            # nothing new in the first window
        _record(["a"], topic="refund_delay"),  # another key
    ])
    assert harness.seen == [
        (["a", "b"], ["a", "b"], 2),
        (["c"], ["a", "b", "c"], 3),
        (["a"], ["a"], 1),
        ([], ["a", "b", "c"], 3),
        (["a"], ["a"], 1),
    ]


def test_the_changelog_takes_each_member_once_however_many_records_bring_it(harness: Harness) -> None:
    # A spike: 1,000 mentions of one topic-minute arrive in 50 batches, and each batch also
    # re-reads the previous one's mentions. A changelog of whole sets would write 25,500 ids.
    records = []
    for batch in range(50):
        fresh = [f"m{batch}-{i}" for i in range(20)]
        again = [f"m{batch - 1}-{i}" for i in range(20)] if batch else []
        records.append(_record(again + fresh))
    harness.run(records)

    assert harness.seen[-1][2] == 1000
    written = [member for _, part in harness.written["parts"] for member in part]
    assert sorted(written) == sorted(f"m{b}-{i}" for b in range(50) for i in range(20))
    assert len(harness.written["heads"]) == 50
    assert harness.written["heads"][-1][1] == [50, 1000]

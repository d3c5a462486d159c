"""A native item too large for a Kafka record is rejected in part, and its source reads on."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from kafka.errors import MessageSizeTooLargeError
from test_runner import FakeAck, RecordingKafka, Scripted, clock  # noqa: F401 - a fixture

from connectors import runner as runner_module
from connectors.base import Page, RejectedItem
from connectors.cursors import MemoryCursorStore
from connectors.runner import MentionProducer, Runner

#: kafka-python's default max_request_size
MAX_REQUEST_SIZE = 1_048_576


class SizedKafka(RecordingKafka):
    """kafka-python's producer with its size check: a record over max_request_size is refused at send."""

    def send(self, topic: str, value: bytes, **kwargs: Any) -> FakeAck:
        size = len(value) + len(kwargs.get("key") or b"")
        if size > MAX_REQUEST_SIZE:
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized which is larger than "
                                           "the maximum request size")
        return super().send(topic, value, **kwargs)


@pytest.mark.usefixtures("clock")  # waits advance a fake clock
async def test_a_rejected_item_too_large_for_kafka_is_cut_and_the_cursor_moves_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "KafkaProducer", SizedKafka)
    producer = MentionProducer(["kafka:9092"], topic_raw="raw", topic_rejected="rejected")
    cursors = MemoryCursorStore()
    holder: list[Runner] = []
    huge = orjson.dumps({"id": "post-1", "html": "x" * 1_200_000}).decode()
    connector = Scripted([Page([], {"at": 2}, rejected=[RejectedItem(huge, "scripted: entry has no title")])],
                         holder)
    runner = Runner(producer, cursors)
    holder.append(runner)
    await runner.run([connector])
    assert cursors.load("scripted") == {"at": 2}
    assert connector.cursors_seen[:2] == [None, {"at": 2}]  # the next poll starts past the page
    kafka: SizedKafka = producer._producer  # type: ignore[assignment]
    [value] = [value for topic, value in kafka.sent if topic == "rejected"]
    assert len(value) <= runner_module.MAX_RECORD_BYTES
    record = orjson.loads(value)
    assert record["topic"] == "connector:scripted"
    assert record["reason"].startswith("scripted: entry has no title")
    assert f"kept its first 2,000 of {len(huge):,} bytes" in record["reason"]
    assert huge.startswith(record["payload"]) and len(record["payload"]) == 2000


def test_a_rejected_item_that_fits_is_kept_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "KafkaProducer", SizedKafka)
    producer = MentionProducer(["kafka:9092"], topic_raw="raw", topic_rejected="rejected")
    item = orjson.dumps({"id": "post-2", "html": "y" * 500_000}).decode()
    producer.send_rejected([RejectedItem(item, "scripted: entry has no title")], source="scripted").wait()
    kafka: SizedKafka = producer._producer  # type: ignore[assignment]
    [(_, value)] = kafka.sent
    record = orjson.loads(value)
    assert record["payload"] == item and record["reason"] == "scripted: entry has no title"

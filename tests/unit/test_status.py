"""Consumer lag reads committed offsets whatever shape the Kafka client answers in."""

from __future__ import annotations

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from streams.status import committed_offsets

TP = TopicPartition("mentions.raw", 0)
OFFSET = OffsetAndMetadata(42, None, -1)


class Admin3:
    def list_group_offsets(self, group: str) -> dict:
        return {group: {TP: OFFSET}}


class Admin2:
    def list_consumer_group_offsets(self, group: str) -> dict:
        return {TP: OFFSET}


def test_committed_offsets_by_partition_from_either_client_generation() -> None:
    assert committed_offsets(Admin3(), "earful") == {TP: OFFSET}
    assert committed_offsets(Admin2(), "earful") == {TP: OFFSET}

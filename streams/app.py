"""The Faust app: one per worker process, configured from Settings."""

from __future__ import annotations

import faust

from streams.settings import Settings


def create_app(settings: Settings) -> faust.App:
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    broker = ";".join(f"kafka://{server}" for server in settings.kafka_servers)
    return faust.App(
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

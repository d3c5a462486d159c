"""When the index agent's progress lets windows close (the alerting ticks wait on it)."""

from __future__ import annotations

from streams.agents import STALL_SECONDS, Throughput

SIZE, WITHIN, WARM_UP = 2000, 1.0, 120.0


def _caught_up(stats: Throughput, now: float) -> bool:
    return stats.caught_up(batch_size=SIZE, batch_within=WITHIN, warm_up=WARM_UP, now=now)


def test_a_batch_held_by_the_search_server_keeps_windows_open() -> None:
    stats = Throughput(started_at=0.0, last_at=100.0, last_records=10)
    assert _caught_up(stats, now=150.0)  # idle, nothing in flight
    stats.busy[1] = 150.0
    assert _caught_up(stats, now=151.0)  # a batch being written
    assert not _caught_up(stats, now=150.0 + STALL_SECONDS)  # still not stored: held
    assert not _caught_up(stats, now=600.0)  # however long the search server refuses it
    del stats.busy[1]
    assert _caught_up(stats, now=600.0)


def test_one_held_actor_is_enough_to_wait() -> None:
    stats = Throughput(started_at=0.0, last_at=100.0, last_records=10, busy={1: 90.0, 2: 104.0})
    assert not _caught_up(stats, now=105.0)


def test_a_backlog_keeps_windows_open_until_a_batch_comes_back_short() -> None:
    stats = Throughput(started_at=0.0, last_at=100.0, last_records=SIZE)
    assert not _caught_up(stats, now=100.5)  # a full batch: more is waiting
    assert _caught_up(stats, now=100.0 + 2 * WITHIN + 0.1)  # nothing came since: caught up
    stats.last_records = 5
    assert _caught_up(stats, now=100.5)


def test_a_fresh_worker_reads_what_it_was_left_before_windows_close() -> None:
    stats = Throughput(started_at=0.0)
    assert not _caught_up(stats, now=5.0)  # nothing stored yet: a backlog may be waiting
    assert _caught_up(stats, now=WARM_UP)  # nothing came in the grace period: none was
    stats.last_at, stats.last_records = 6.0, 40
    assert _caught_up(stats, now=7.0)  # a short first batch: caught up already

"""A set per key and window (the mention ids, the authors counted in a topic's minute) whose
changelog grows by what is added, not by the whole set.

A windowed table whose value is the whole set writes the whole set to its changelog on every
change. A window that takes N mentions in B batches then writes about N·B/2 ids: at a spike of
a thousand mentions a minute, indexed in a batch a second, that is some 30,000 ids for one
topic-minute, and a firehose makes it quadratic. Here each change is one new *part* (the
members it adds, written once) and a small *head* (how many parts, how many members):

    <name>-heads  (key)          → [parts, size]
    <name>-parts  (key \\x1f i)  → the members added by the i-th change

Both are tumbling-window tables on the same field, so both expire with the window and are
rebuilt from their changelogs when a worker takes over a partition.

The part is written before the head. A worker that dies between the two leaves a part the head
does not count; the next change overwrites it. Kafka gives no atomic write across two changelog
topics outside transactions, so the reverse (a head whose last part was lost) would forget that
part's members and count them again if they were read again; the set never loses a count.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import faust

__all__ = ["WindowedSet"]


class WindowedSet:
    """Members per key in tumbling windows of ``window`` seconds, placed by ``field`` of the
    event being processed. ``members`` and ``add`` are called inside that event's agent."""

    def __init__(self, app: faust.App, name: str, *, window: float, expires: timedelta,
                 field: Any, partitions: int) -> None:
        self.window = window
        self.heads = app.Table(f"{name}-heads", default=list, partitions=partitions) \
            .tumbling(window, expires=expires).relative_to_field(field)
        self.parts = app.Table(f"{name}-parts", default=list, partitions=partitions) \
            .tumbling(window, expires=expires).relative_to_field(field)

    @staticmethod
    def _part(key: str, i: int) -> str:
        return f"{key}\x1f{i}"

    def members(self, key: str) -> set[str]:
        """The members of ``key`` in the current event's window."""
        head = self.heads[key].value()
        if not head:
            return set()
        found: set[str] = set()
        for i in range(int(head[0])):
            found.update(self.parts[self._part(key, i)].value())
        return found

    def add(self, key: str, new: Iterable[str], known: set[str] | None = None) -> list[str]:
        """Add ``new`` to ``key``'s set in the current event's window; the members that were
        not in it, in order. ``known``: the set's members if the caller has just read them."""
        if known is None:
            known = self.members(key)
        added = list(dict.fromkeys(m for m in new if m not in known))
        if added:
            head = self.heads[key].value() or [0, 0]
            parts, size = int(head[0]), int(head[1])
            self.parts[self._part(key, parts)] = added
            self.heads[key] = [parts + 1, size + len(added)]
        return added

    def size(self, key: str, start: float) -> int:
        """How many members ``key`` has in the window starting at ``start``."""
        head = self.heads.relative_to(start + self.window / 2)[key].value()
        return int(head[1]) if head else 0

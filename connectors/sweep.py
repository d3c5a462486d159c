"""Reading a newest-first API forward in time, without gaps or repeats.

Most search APIs (Bluesky, X, Hacker News, YouTube, Facebook) answer newest
first and page backwards (``cursor``/``next_token``/``pageToken``/``page``).
A sweep walks those pages back until it reaches the watermark (everything
older was delivered before), then raises the watermark to the newest item it
saw. Posts that arrive during a sweep are newer than that, so the next sweep
finds them: no gap. Items exactly at the watermark are remembered by id
(``edge``), because some APIs filter with ">=" and several posts share a second.

The state is plain JSON, saved by the runner as part of the cursor after Kafka
acknowledged the page, so a restart resumes mid-sweep where it stopped.

On the very first run there is no watermark: the sweep reads one page only
(the newest) instead of walking back through the platform's whole history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
Mark = int | str


@dataclass
class Sweep:
    since: Mark | None = None  # the watermark: everything at or below it was delivered
    token: str | None = None  # where the current sweep continues (the platform's page token)
    high: Mark | None = None  # the newest mark seen in the current sweep
    edge: list[str] = field(default_factory=list)  # ids at ``since``
    high_edge: list[str] = field(default_factory=list)  # ids at ``high``

    @classmethod
    def load(cls, state: Any) -> Sweep:
        if not isinstance(state, dict):
            return cls()
        return cls(since=state.get("since"), token=state.get("token"), high=state.get("high"),
                   edge=list(state.get("edge") or []), high_edge=list(state.get("high_edge") or []))

    def dump(self) -> dict[str, Any]:
        return {"since": self.since, "token": self.token, "high": self.high,
                "edge": self.edge, "high_edge": self.high_edge}

    def is_new(self, native_id: str, mark: Mark) -> bool:
        if self.since is None:
            return True
        return mark > self.since or (mark == self.since and native_id not in self.edge)  # type: ignore[operator]

    def step(self, items: Iterable[T], *, ident: Callable[[T], str], mark: Callable[[T], Mark],
             next_token: str | None) -> tuple[list[T], bool]:
        """Take one page; return its new items and whether the sweep continues (``has_more``).

        Raises nothing on odd items: an item whose id or mark cannot be read is
        passed through as new so that mapping rejects it with the reason.
        """
        fresh, reached_old = self._take(items, ident=ident, mark=mark)
        first_run = self.since is None
        if next_token and not reached_old and not first_run:
            self.token = next_token
            return fresh, True
        self._finish()
        return fresh, False

    def take(self, items: Iterable[T], *, ident: Callable[[T], str], mark: Callable[[T], Mark]) -> list[T]:
        """Take one page's new items and leave the sweep open (``finish`` ends it), for a platform
        that pages several lists at once (Facebook: one ``after`` cursor per post)."""
        fresh, _ = self._take(items, ident=ident, mark=mark)
        return fresh

    def finish(self) -> None:
        """End the sweep: the watermark rises to the newest item it saw."""
        self._finish()

    def _take(self, items: Iterable[T], *, ident: Callable[[T], str],
              mark: Callable[[T], Mark]) -> tuple[list[T], bool]:
        fresh: list[T] = []
        reached_old = False
        for item in items:
            try:
                native_id, item_mark = ident(item), mark(item)
            except Exception:  # noqa: BLE001 - the mapper reports why
                fresh.append(item)
                continue
            if not self.is_new(native_id, item_mark):
                reached_old = True
                continue
            fresh.append(item)
            if self.high is None or item_mark > self.high:  # type: ignore[operator]
                self.high, self.high_edge = item_mark, [native_id]
            elif item_mark == self.high and native_id not in self.high_edge:
                self.high_edge.append(native_id)
        return fresh, reached_old

    def _finish(self) -> None:
        if self.high is not None and (self.since is None or self.high >= self.since):  # type: ignore[operator]
            if self.high == self.since:
                self.edge = sorted(set(self.edge) | set(self.high_edge))
            else:
                self.edge = list(self.high_edge)
            self.since = self.high
        self.token, self.high, self.high_edge = None, None, []

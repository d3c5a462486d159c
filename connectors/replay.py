"""Replay a file of real posts (CSV or JSONL) as if it were a live source.

Rows are sorted by their timestamp and released at the pace they were written
(``speed`` times faster, or as fast as possible). The timestamp comes from the
time column; without one, from the Twitter/X snowflake id when the id column
holds one; otherwise rows are spaced one second apart. By default replayed
mentions are re-timed to now (a live demo, live dashboards); ``keep_time``
keeps the historical timestamps (backtests).
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson

from connectors.base import Connector, Cursor, FatalError, Page
from schemas import Mention

#: Twitter/X snowflake ids carry their creation time (ms since this epoch in the top bits).
TWITTER_EPOCH_MS = 1288834974657
_SNOWFLAKE_MIN = 1 << 40  # ids below this predate snowflakes

TIME_COLUMNS = ("created_at", "tweet_created", "timestamp", "time", "date")
ID_COLUMNS = ("id", "tweet_id", "native_id", "first_tweet_id")
TIME_FORMATS = (
    "%a %b %d %H:%M:%S %z %Y",  # Twitter API v1: Tue Oct 31 22:10:47 +0000 2017
    "%m/%d/%Y %H:%M",  # 2/24/2015 11:35
    "%m/%d/%Y %H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M:%S.%f",
)


def parse_time(value: str) -> datetime:
    value = value.strip()
    if not value:
        raise ValueError("empty timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        for fmt in TIME_FORMATS:
            try:
                parsed = datetime.strptime(value, fmt)
                break
            except ValueError:
                continue
        else:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(f"unrecognised timestamp {value!r}") from None
            return datetime.fromtimestamp(seconds / 1000 if seconds > 1e11 else seconds, UTC)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def snowflake_time(native_id: str) -> datetime | None:
    try:
        value = int(native_id)
    except ValueError:
        return None
    if value < _SNOWFLAKE_MIN:
        return None
    return datetime.fromtimestamp(((value >> 22) + TWITTER_EPOCH_MS) / 1000, UTC)


@dataclass(frozen=True)
class ReplayOptions:
    path: Path
    source: str
    format: Literal["csv", "jsonl"] = "csv"
    text_col: str = "text"
    time_col: str | None = None
    id_col: str | None = None
    speed: float = 1.0
    as_fast_as_possible: bool = False
    keep_time: bool = False
    page_size: int = 500
    limit: int | None = None
    keep_raw: bool = False
    #: start over at the end, forever; each pass is a new copy of the posts (``~N`` on native ids)
    loop: bool = False
    #: the longest wait between two posts, in replay seconds: a file that spans months still plays
    max_gap: float | None = None


@dataclass(frozen=True)
class _Row:
    index: int
    at: datetime | None
    fields: dict[str, Any]


def read_rows(options: ReplayOptions) -> Iterator[dict[str, Any]]:
    if not options.path.exists():
        raise FatalError(f"{options.path}: no such file")
    with options.path.open(encoding="utf-8", errors="replace", newline="") as handle:
        if options.format == "jsonl":
            for line in handle:
                if line.strip():
                    try:
                        loaded = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        yield {"__invalid__": f"invalid JSON: {exc}", "__line__": line.strip()}
                        continue
                    yield loaded if isinstance(loaded, dict) else {"__invalid__": "not a JSON object",
                                                                   "__line__": line.strip()}
        else:
            yield from csv.DictReader(handle)


class ReplayConnector(Connector):
    """A finite source: the rows of one file, in time order, at the chosen pace."""

    poll_interval = 0.0

    def __init__(self, options: ReplayOptions) -> None:
        self.options = options
        self.name = options.source
        self._rows: list[_Row] | None = None
        self._columns: tuple[str, str | None, str | None] | None = None
        self._start_wall: float | None = None
        self._cycle = 0
        self._offsets: dict[int, float] | None = None

    @property
    def total(self) -> int:
        return len(self._load())

    def _resolve_columns(self, first: dict[str, Any]) -> tuple[str, str | None, str | None]:
        opts = self.options
        columns = set(first)
        if opts.text_col not in columns:
            raise FatalError(f"{opts.path}: no text column {opts.text_col!r} (columns: {sorted(columns)})")
        for wanted, label in ((opts.time_col, "time"), (opts.id_col, "id")):
            if wanted is not None and wanted not in columns:
                raise FatalError(f"{opts.path}: no {label} column {wanted!r} (columns: {sorted(columns)})")
        time_col = opts.time_col or next((c for c in TIME_COLUMNS if c in columns), None)
        id_col = opts.id_col or next((c for c in ID_COLUMNS if c in columns), None)
        return opts.text_col, time_col, id_col

    def _load(self) -> list[_Row]:
        if self._rows is not None:
            return self._rows
        rows: list[_Row] = []
        for index, fields in enumerate(read_rows(self.options)):
            if self.options.limit is not None and index >= self.options.limit:
                break
            if self._columns is None and "__invalid__" not in fields:
                self._columns = self._resolve_columns(fields)
            rows.append(_Row(index, self._row_time(fields), fields))
        if self._columns is None:
            self._columns = (self.options.text_col, None, None)
        # Stable sort: rows without a usable time keep their place relative to each other.
        timed = [r for r in rows if r.at is not None]
        if len(timed) == len(rows):
            rows.sort(key=lambda r: r.at)  # type: ignore[arg-type, return-value]
        self._rows = rows
        if self.options.max_gap is not None and timed and len(timed) == len(rows):
            # Quiet stretches of the original (nights, months between events) shrink to max_gap.
            self._offsets, offset = {}, 0.0
            for before, row in zip([rows[0], *rows], rows, strict=False):
                gap = (row.at - before.at).total_seconds() / max(self.options.speed, 1e-9)  # type: ignore[operator]
                offset += min(max(gap, 0.0), self.options.max_gap)
                self._offsets[row.index] = offset
        return rows

    def _row_time(self, fields: dict[str, Any]) -> datetime | None:
        if self._columns is None or "__invalid__" in fields:
            return None
        _, time_col, id_col = self._columns
        try:
            if time_col is not None:
                return parse_time(str(fields.get(time_col) or ""))
        except ValueError:
            return None
        if id_col is not None:
            return snowflake_time(str(fields.get(id_col) or ""))
        return None

    def to_mention(self, item: _Row) -> Mention:
        fields = item.fields
        if "__invalid__" in fields:
            raise ValueError(fields["__invalid__"])
        text_col, time_col, id_col = self._columns or (self.options.text_col, None, None)
        native_id = str(fields.get(id_col) or "").strip() if id_col else ""
        native_id = native_id or f"row-{item.index + 1}"
        if self._cycle:
            native_id = f"{native_id}~{self._cycle}"
        if item.at is None and time_col is not None:
            raise ValueError(f"row {item.index + 1}: unreadable {time_col!r}: {fields.get(time_col)!r}")
        created = self._created_at(item)
        return Mention.build(
            source=self.options.source, native_id=native_id, text=str(fields.get(text_col) or ""),
            created_at=created, query=f"replay:{self.options.path.name}",
            raw={k: v for k, v in fields.items() if k != text_col} if self.options.keep_raw else None,
        )

    def _created_at(self, item: _Row) -> datetime:
        rows = self._load()
        first = rows[0].at if rows and rows[0].at is not None else None
        if self.options.keep_time and item.at is not None:
            return item.at
        offset = self._offset(item)
        base = datetime.fromtimestamp(self._start_wall or time.time(), UTC)
        if first is None:
            return base
        return base + timedelta(seconds=offset)

    def _offset(self, item: _Row) -> float:
        """Seconds after the first row at which this row is released."""
        rows = self._load()
        if self.options.as_fast_as_possible:
            return 0.0
        if self._offsets is not None:
            return self._offsets[item.index]
        first = rows[0].at
        if first is None or item.at is None:
            return item.index / max(self.options.speed, 1e-9)
        return (item.at - first).total_seconds() / self.options.speed

    async def poll(self, cursor: Cursor) -> Page:
        rows = self._load()
        position = int((cursor or {}).get("row", 0))
        self._cycle = int((cursor or {}).get("cycle", 0))
        if position >= len(rows) and self.options.loop and rows:
            position, self._cycle, self._start_wall = 0, self._cycle + 1, None
        if self._start_wall is None:
            # A resumed replay continues the schedule where it stopped.
            resumed = self._offset(rows[position]) if 0 < position < len(rows) else 0.0
            self._start_wall = time.time() - resumed
        if position >= len(rows):
            return Page([], {"row": position, "cycle": self._cycle}, done=True)
        due = self._start_wall + self._offset(rows[position])
        wait = due - time.time()
        if wait > 0:
            await asyncio.sleep(min(wait, 1.0))
        now = time.time()
        batch: list[_Row] = []
        end = position
        while end < len(rows) and len(batch) < self.options.page_size:
            if self._start_wall + self._offset(rows[end]) > now:
                break
            batch.append(rows[end])
            end += 1
        mentions, rejected = self.map_items(batch)
        done = end >= len(rows) and not self.options.loop
        return Page(mentions, {"row": end, "cycle": self._cycle}, rejected=rejected, has_more=True, done=done)

    def describe(self, item: _Row) -> str:
        return _payload(item)


def _payload(row: _Row) -> str:
    fields = row.fields
    if "__line__" in fields:
        return str(fields["__line__"])
    return orjson.dumps(fields, default=str).decode()

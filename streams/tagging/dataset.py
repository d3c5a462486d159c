"""Labelled and unlabelled files for the batch commands, and the one train/held-out split.

``split_of`` is the only place that decides whether a row is for training or held out:
``earful train`` fits on ``train`` rows and ``earful eval --split test`` scores the others,
so rules and thresholds are never tuned on held-out posts. The split hashes the row's id
(its ``--id-col`` value, else its row number), so it is stable across runs and machines.
"""

from __future__ import annotations

import csv
import hashlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

Split = Literal["train", "test", "all"]
TRAIN_SHARE = 0.8


class DataError(ValueError):
    """The input file is missing, unreadable or lacks a column."""


def split_of(key: str) -> Literal["train", "test"]:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "train" if bucket < TRAIN_SHARE else "test"


def topic_id(label: str) -> str:
    """A label as written by annotators -> snake_case topic id ("Can't Tell" -> can_t_tell)."""
    return re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    text: str
    labels: frozenset[str]  # topic ids; empty for an unlabelled or negative row


def _records(path: Path) -> Iterator[dict[str, object]]:
    if str(path) == "-":
        yield from csv.DictReader(sys.stdin)
        return
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.suffix.lower() in {".jsonl", ".ndjson", ".json"}:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not JSON: {exc}") from exc
                if not isinstance(rec, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line")
                yield rec
        return
    csv.field_size_limit(10_000_000)
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        yield from csv.DictReader(fh)


def read_rows(
    path: Path,
    text_col: str,
    *,
    id_col: str | None = None,
    label_col: str | None = None,
    label_sep: str | None = None,
    split: Split = "all",
) -> Iterator[Row]:
    """Rows of a CSV or JSONL file; checks the columns on the first row."""
    for n, rec in enumerate(_records(Path(path))):
        if n == 0:
            for col in (text_col, id_col, label_col):
                if col is not None and col not in rec:
                    have = ", ".join(map(str, rec)) or "none"
                    raise DataError(f"{path}: no column {col!r} (columns: {have})")
        rid = str(rec.get(id_col, "")) if id_col else str(n)
        if split != "all" and split_of(rid) != split:
            continue
        labels: frozenset[str] = frozenset()
        if label_col:
            raw = rec.get(label_col)
            values = [] if raw is None else (raw if isinstance(raw, list) else [str(raw)])
            if label_sep and not isinstance(raw, list):
                values = [v for s in values for v in s.split(label_sep)]
            labels = frozenset(t for t in (topic_id(str(v)) for v in values) if t)
        text = rec.get(text_col)
        yield Row(rid, "" if text is None else str(text), labels)

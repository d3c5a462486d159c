"""Real posts for the benchmarks, read from ../shared/data as they are."""

from __future__ import annotations

import csv
from pathlib import Path

from connectors.replay import parse_time, snowflake_time
from schemas import Mention

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SETS = (
    ("airline", "airline-sentiment/tweets.csv", "tweet_id", "tweet_created"),
    ("crisislext26", "crisislext26/tweets.csv", "tweet_id", None),
    ("twcs", "twcs/twcs_first5000.csv", "tweet_id", "created_at"),
    ("airline_customers", "twcs/airlines_unlabeled_sample10k.csv", "first_tweet_id", None),
)


def real_mentions(limit: int | None = None) -> list[Mention]:
    """Every post of the text data sets, as mentions (unique ids), in a fixed order."""
    mentions: dict[str, Mention] = {}
    for source, rel, id_col, time_col in SETS:
        path = DATA / rel
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.DictReader(handle)
            text_col = "text" if "text" in (reader.fieldnames or []) else (reader.fieldnames or ["text"])[-1]
            for number, row in enumerate(reader):
                text = (row.get(text_col) or "").strip()
                if not text:
                    continue
                native_id = row[id_col] if id_col else f"row-{number + 1}"
                created = parse_time(row[time_col]) if time_col else snowflake_time(native_id)
                mention = Mention.build(source=source, native_id=native_id, text=text,
                                        created_at=created or parse_time("2017-10-31T00:00:00"))
                mentions[mention.id] = mention
                if limit is not None and len(mentions) >= limit:
                    return list(mentions.values())
    return list(mentions.values())

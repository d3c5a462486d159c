"""Tagging throughput on one core: the default tax-agency taxonomy over real posts.

Figures (mentions tagged per second, one process, batches as the worker sends them):

- ``rules``: the compiled matcher alone (normalisation, one Aho-Corasick pass, patterns,
  co-occurrence rules, precedence);
- ``enriched``: the same plus language detection and sentiment, as the stream runs it;
- ``naive_regex``: every phrase of the taxonomy as its own word-bounded regex, tried one
  after the other on the lower-cased post: what the one-pass matcher replaces.

Run alone with ``python -m bench.bench_tagging``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable, Sequence

from streams.settings import PROJECT_ROOT
from streams.tagging import Tagger
from streams.tagging import taxonomy as taxonomy_mod

DATA = PROJECT_ROOT.parent / "shared" / "data"
TAXONOMY = PROJECT_ROOT / "deploy" / "taxonomies" / "tax-agency.yaml"
SOURCES = (("twcs/twcs_first5000.csv", "text"), ("crisislext26/tweets.csv", "text"))
BATCH = 512
MIN_SECONDS = 1.0


def real_posts(limit: int | None = None) -> list[str]:
    """Customer-support and crisis tweets, in file order."""
    posts: list[str] = []
    for rel, col in SOURCES:
        with (DATA / rel).open(encoding="utf-8", errors="replace", newline="") as fh:
            posts.extend(text for row in csv.DictReader(fh) if (text := (row.get(col) or "").strip()))
    return posts[:limit] if limit is not None else posts


def _rate(fn: Callable[[Sequence[str]], object], posts: Sequence[str]) -> float:
    """Posts per second, over whole passes until at least MIN_SECONDS have gone by."""
    fn(posts[:BATCH])  # warm caches
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(posts), BATCH):
            fn(posts[i:i + BATCH])
        done += len(posts)
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_SECONDS:
            return done / elapsed


class NaiveRegexTagger:
    """One regex per phrase and per co-occurrence group entry, tried in turn."""

    def __init__(self, tax: taxonomy_mod.Taxonomy) -> None:
        def rx(phrase: str) -> re.Pattern[str]:
            body = re.escape(phrase.rstrip("*").lower())
            return re.compile(rf"\b{body}" + ("" if phrase.endswith("*") else r"\b"))

        self.phrases = [(tid, rx(p)) for tid, t in tax.topics.items() for p in t.phrases]
        self.excludes = [(tid, rx(p)) for tid, t in tax.topics.items() for p in t.exclude]
        self.groups = [
            (tid, [[rx(p) for p in (tax.lexicons[g] if isinstance(g, str) else g)] for g in rule.groups])
            for tid, t in tax.topics.items() for rule in t.all
        ]

    def tag(self, text: str) -> list[str]:
        low = text.lower()
        excluded = {tid for tid, r in self.excludes if r.search(low)}
        tags = {tid for tid, r in self.phrases if tid not in excluded and r.search(low)}
        for tid, groups in self.groups:
            if tid not in excluded and tid not in tags and all(any(r.search(low) for r in g) for g in groups):
                tags.add(tid)
        return sorted(tags)


def run(limit: int | None = 10_000) -> dict[str, float]:
    posts = real_posts(limit)
    rules = Tagger.load(TAXONOMY, enrich=False)
    enriched = Tagger.load(TAXONOMY, enrich=True)
    naive = NaiveRegexTagger(rules.taxonomy)
    figures = {
        "posts": float(len(posts)),
        "rules tags/s": _rate(rules.tag_many, posts),
        "rules+language+sentiment tags/s": _rate(enriched.tag_many, posts),
        "naive per-phrase regex tags/s": _rate(lambda batch: [naive.tag(t) for t in batch], posts),
    }
    figures["one-pass speedup vs naive"] = figures["rules tags/s"] / figures["naive per-phrase regex tags/s"]
    tagged = sum(1 for r in rules.tag_many(posts) if r.tags)
    figures["share of posts tagged (%)"] = 100.0 * tagged / len(posts)
    print(f"tagging {len(posts)} real posts (twcs, crisislext26) with {rules.version}, one process")
    print(f"  rules only:              {figures['rules tags/s']:>10,.0f} mentions/s")
    print(f"  with language+sentiment: {figures['rules+language+sentiment tags/s']:>10,.0f} mentions/s")
    print(f"  naive per-phrase regex:  {figures['naive per-phrase regex tags/s']:>10,.0f} mentions/s"
          f"  (one-pass matcher {figures['one-pass speedup vs naive']:.1f}x)")
    return figures


if __name__ == "__main__":
    run()

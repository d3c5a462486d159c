"""Learned-tier throughput: the airline model (``make models``) over real airline posts.

Figures (posts scored per second, one process, one pass over distinct posts so the
sentence encoder's cache never helps):

- ``tfidf``: the TF-IDF member of the model alone (the learned tier without embeddings);
- ``blended``: the whole model, TF-IDF blended with all-MiniLM-L6-v2 sentence embeddings.

Run alone with ``python -m bench.bench_model``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence

from streams.settings import PROJECT_ROOT
from streams.tagging import encoder
from streams.tagging import model as model_mod
from streams.tagging.normalize import normalize

DATA = PROJECT_ROOT.parent / "shared" / "data" / "airline-sentiment" / "tweets.csv"
MODEL = PROJECT_ROOT / "deploy" / "models" / "airline.joblib"
BATCH = 512


def _posts(limit: int) -> list[str]:
    seen: dict[str, None] = {}
    with DATA.open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            text = normalize(row.get("text") or "").for_model()
            if text:
                seen.setdefault(text)
            if len(seen) >= limit:
                break
    return list(seen)


def _rate(fn: Callable[[Sequence[str]], object], posts: Sequence[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(posts), BATCH):
        fn(posts[i:i + BATCH])
    return len(posts) / (time.perf_counter() - start)


def run(limit: int = 2_000) -> dict[str, float]:
    if not MODEL.exists():
        print(f"learned tier: not measured (no {MODEL.relative_to(PROJECT_ROOT)}: run `make models`)")
        return {}
    model = model_mod.load(MODEL)
    posts = _posts(limit)
    figures = {"posts": float(len(posts))}
    members = getattr(model.pipeline, "members", None)
    words = members[0][1] if members else model.pipeline
    words.predict_proba(posts[:8])  # warm up
    figures["tfidf posts/s"] = _rate(words.predict_proba, posts)
    if members:
        encoder.load(model.meta.params["embedding"]).clear_cache()
        figures["blended posts/s"] = _rate(model.predict, posts)
    print(f"learned tier {model.version} over {len(posts)} distinct airline posts, one process")
    for name, value in figures.items():
        if name.endswith("/s"):
            print(f"  {name[:-len(' posts/s')]:<8} {value:>10,.0f} posts/s")
    return figures


if __name__ == "__main__":
    run()

"""Learned-tier throughput over real airline posts.

The model is the airline model of ``make models`` when there is one; otherwise the TF-IDF
tier is trained here on the airline train split (about half a minute), so the TF-IDF
figures are measured in every run. Figures (one process, one pass over distinct posts, so
the sentence encoder's cache never helps):

- ``tfidf``: the TF-IDF member of the model alone (the learned tier without embeddings);
- ``tagger``: rules + the TF-IDF tier through the tagger (the blended model's TF-IDF member
  when that is the model), model tags without evidence;
- ``tagger+evidence``: the same, each model tag naming the word that weighed most
  (``EARFUL_MODEL_EVIDENCE``, on by default); ``evidence cost`` is the share of the
  tagger's rate it takes;
- ``blended``: the whole model of ``make models``, TF-IDF blended with the fine-tuned
  all-MiniLM-L6-v2 encoder (or its plain sentence embeddings) (only with that model).

Run alone with ``python -m bench.bench_model``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import csv
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from streams.settings import PROJECT_ROOT
from streams.tagging import Tagger, dataset, encoder
from streams.tagging import model as model_mod
from streams.tagging import taxonomy as taxonomy_mod
from streams.tagging.matcher import Matcher
from streams.tagging.normalize import normalize

DATA = PROJECT_ROOT.parent / "shared" / "data" / "airline-sentiment" / "tweets.csv"
MODEL = PROJECT_ROOT / "deploy" / "models" / "airline.joblib"
TAXONOMY = PROJECT_ROOT / "deploy" / "taxonomies" / "airline.yaml"
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


def _raw_posts(limit: int) -> list[str]:
    """The same distinct posts, as written (the tagger normalises them itself)."""
    seen: dict[str, None] = {}
    with DATA.open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            if normalize(row.get("text") or "").for_model():
                seen.setdefault(row.get("text") or "")
            if len(seen) >= limit:
                break
    return list(seen)


def _rate(fn: Callable[[Sequence[str]], object], posts: Sequence[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(posts), BATCH):
        fn(posts[i:i + BATCH])
    return len(posts) / (time.perf_counter() - start)


def _tfidf_model(into: Path) -> tuple[Path, Path]:
    """The airline model of ``make models``, or a TF-IDF tier trained here on the train split."""
    if MODEL.exists():
        return TAXONOMY, MODEL
    tax = taxonomy_mod.load(TAXONOMY)
    matcher = Matcher(tax)
    rows = list(dataset.read_rows(DATA, "text", id_col="tweet_id", label_col="negativereason", split="train"))
    labels = [row.labels for row in rows]
    known = set().union(*labels) & set(tax.topics)
    print(f"learned tier: no {MODEL.relative_to(PROJECT_ROOT)} (`make models`): training the TF-IDF tier "
          f"on {len(rows)} airline train-split posts first")
    model = model_mod.train([normalize(r.text).for_model() for r in rows], labels, sorted(known),
                            rule_hits=[frozenset(matcher.match(r.text).reasons) for r in rows],
                            taxonomy=tax.name, taxonomy_hash=tax.content_hash, name="airline-bench",
                            params={"C": 4.0})
    path = into / "airline-bench.joblib"
    model.save(path)
    return TAXONOMY, path


def run(limit: int = 2_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="earful-bench-model-") as tmp:
        taxonomy, path = _tfidf_model(Path(tmp))
        model = model_mod.load(path)
        posts = _posts(limit)
        figures = {"posts": float(len(posts))}
        members = getattr(model.pipeline, "members", None)
        words = model_mod.tfidf_member(model.pipeline)
        words.predict_proba(posts[:8])  # warm up
        figures["tfidf posts/s"] = _rate(words.predict_proba, posts)
        raw = _raw_posts(limit)
        tfidf_path = path
        if members:  # the tagger figures are the TF-IDF tier's; the blend's rate is measured below
            tfidf_path = Path(tmp) / "tfidf-member.joblib"
            meta = dataclasses.replace(model.meta, version=f"{model.version}-tfidf",
                                       params={**model.meta.params, "embedding": None, "fine_tune": 0})
            model_mod.TopicModel(words, meta).save(tfidf_path)
        plain = Tagger.load(taxonomy, tfidf_path, enrich=False, explain=False)
        explained = Tagger.load(taxonomy, tfidf_path, enrich=False, explain=True)
        plain.tag_many(raw[:8])
        explained.tag_many(raw[:8])
        figures["tagger posts/s"] = _rate(plain.tag_many, raw)
        figures["tagger+evidence posts/s"] = _rate(explained.tag_many, raw)
        figures["evidence cost (share of rate)"] = 1 - figures["tagger+evidence posts/s"] / figures["tagger posts/s"]
        tagged = explained.tag_many(raw)
        reasons = [w for r in tagged for w in r.why if w.tier == "model"]
        figures["model tags per post"] = len(reasons) / len(raw)
        figures["model tags with evidence (share)"] = sum(1 for w in reasons if w.span) / max(len(reasons), 1)
        if members:  # every post is encoded afresh
            for name, estimator, _weight in members:
                if name == "embedding":
                    encoder.load(model.meta.params["embedding"]).clear_cache()
                elif name == "fine_tuned":
                    estimator.encoder().clear_cache()
            figures["blended posts/s"] = _rate(model.predict, posts)
        print(f"learned tier {model.version} over {len(posts)} distinct airline posts, one process")
    for name, value in figures.items():
        if name.endswith("/s"):
            print(f"  {name[:-len(' posts/s')]:<16} {value:>10,.0f} posts/s")
    return figures


if __name__ == "__main__":
    run()

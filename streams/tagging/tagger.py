"""The tagger the stream and the batch commands share.

Precedence, per topic, for one post:

1. An exclusion (``exclude`` phrase or ``exclude_patterns`` hit) always wins: the topic is
   not tagged, whatever the rules, the model or its children say.
2. A rule match (phrase, pattern, ``all`` co-occurrence, or a term of the post's language)
   tags the topic; its score is 1.0 and each matching rule is a ``TagReason``.
3. The model, when one is loaded, tags a topic the rules did not when its probability is at
   or above the topic's threshold: the taxonomy's ``threshold`` if set, else the threshold
   the model was tuned to, else 0.5. Its score is that probability, and its reason names
   the word of the post that weighed most for the topic (span and text; see
   :mod:`streams.tagging.explain`). Topics the model knows but the taxonomy does not are
   ignored.
4. A tagged topic also tags its ancestors (``parent``), unless they are excluded.

Language: the caller's ``lang`` (the source's own tag) picks the per-language terms; when
it is missing the detected language is used. Detection and sentiment run only when
enrichment is on; they are the costly part of :meth:`Tagger.tag` (see bench/bench_tagging.py).

A Tagger is built once per worker process and used from one thread; :meth:`maybe_reload`
swaps in a changed taxonomy file between calls.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.records import TagReason
from streams.tagging import enrich
from streams.tagging import explain as explain_mod
from streams.tagging import model as model_mod
from streams.tagging import taxonomy as taxonomy_mod
from streams.tagging.matcher import Matcher, RuleMatch, primary_lang

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TagResult:
    tags: list[str]
    why: list[TagReason]
    scores: dict[str, float]
    detected_lang: str | None
    sentiment: float | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    taxonomy: taxonomy_mod.Taxonomy
    matcher: Matcher
    ancestors: dict[str, tuple[str, ...]]
    thresholds: dict[str, float]  # model topics this taxonomy knows -> threshold


def _compile(tax: taxonomy_mod.Taxonomy, model: model_mod.TopicModel | None) -> _Compiled:
    thresholds: dict[str, float] = {}
    if model is not None:
        if model.meta.taxonomy and model.meta.taxonomy != tax.name:
            raise model_mod.ModelError(
                f"model {model.version} was trained for taxonomy {model.meta.taxonomy!r}, not {tax.name!r}"
            )
        for topic in model.meta.topics:
            if topic not in tax.topics:
                log.warning("model topic %s is not in taxonomy %s: ignored", topic, tax.name)
                continue
            own = tax.topics[topic].threshold
            thresholds[topic] = own if own is not None else model.meta.thresholds.get(topic, 0.5)
    ancestors = {tid: tuple(tax.ancestors(tid)) for tid in tax.topics}
    return _Compiled(tax, Matcher(tax), ancestors, thresholds)


Evidence = dict[str, tuple[tuple[int, int], str]]  # topic -> (span, text) of the word that weighed most


def model_topics(compiled: _Compiled, rules: RuleMatch, probs: dict[str, float] | None) -> list[str]:
    """The topics the model tags for a post: at or above threshold, not ruled, not excluded."""
    if not probs:
        return []
    return [topic for topic, threshold in compiled.thresholds.items()
            if topic not in rules.reasons and topic not in rules.excluded and probs.get(topic, 0.0) >= threshold]


def combine(
    compiled: _Compiled, rules: RuleMatch, probs: dict[str, float] | None, evidence: Evidence | None = None
) -> tuple[list[str], list[TagReason], dict[str, float]]:
    """Rules + model probabilities -> (tags, why, scores), by the precedence above.

    ``evidence`` gives, for the topics the model tags, the span and text of the word that
    weighed most (see :mod:`streams.tagging.explain`).
    """
    why: list[TagReason] = []
    scores: dict[str, float] = {}
    for topic, reasons in rules.reasons.items():
        why.extend(reasons)
        scores[topic] = 1.0
    for topic in model_topics(compiled, rules, probs):
        p = round((probs or {})[topic], 4)
        scores[topic] = p
        span, matched = (evidence or {}).get(topic, (None, None))
        why.append(TagReason(topic=topic, rule=f"{topic}.model", tier="model", score=p, span=span, matched=matched))
    for topic in list(scores):
        for parent in compiled.ancestors.get(topic, ()):
            if parent in rules.excluded:
                break
            if parent not in scores:
                scores[parent] = scores[topic]
                why.append(TagReason(topic=parent, rule=f"{parent}.child.{topic}", tier="rule", score=scores[topic]))
    return sorted(scores), why, scores


class Tagger:
    def __init__(
        self,
        taxonomy_path: Path,
        compiled: _Compiled,
        model: model_mod.TopicModel | None,
        *,
        language: bool,
        sentiment: bool,
        explain: bool = True,
    ) -> None:
        self.taxonomy_path = Path(taxonomy_path)
        self.model = model
        self.language = language
        self.sentiment = sentiment
        self._compiled = compiled
        self._stat = _stat_key(self.taxonomy_path)
        self._explainer = explain_mod.Explainer(model) if model is not None and explain else None

    @classmethod
    def load(
        cls,
        taxonomy_path: Path,
        model_path: Path | None = None,
        *,
        enrich: bool = True,
        language: bool | None = None,
        sentiment: bool | None = None,
        explain: bool = True,
    ) -> Tagger:
        """Read and compile the taxonomy (and model). ``language``/``sentiment`` override ``enrich``.

        ``explain``: model tags name the word that weighed most (off for backtests, which
        read only the tags; it takes up to about half the TF-IDF tier's rate, see make bench).
        """
        tax = taxonomy_mod.load(Path(taxonomy_path))
        model = model_mod.load(Path(model_path)) if model_path is not None else None
        tagger = cls(
            taxonomy_path,
            _compile(tax, model),
            model,
            language=enrich if language is None else language,
            sentiment=enrich if sentiment is None else sentiment,
            explain=explain,
        )
        if tagger.language or tagger.sentiment:
            _warm_up(tagger.language, tagger.sentiment)
        return tagger

    @property
    def taxonomy(self) -> taxonomy_mod.Taxonomy:
        return self._compiled.taxonomy

    @property
    def version(self) -> str:
        base = self._compiled.taxonomy.version
        return f"{base}+{self.model.version}" if self.model is not None else base

    def tag(self, text: str, lang: str | None = None) -> TagResult:
        return self.tag_many([text], [lang])[0]

    def tag_many(self, texts: Sequence[str], langs: Sequence[str | None] | None = None) -> list[TagResult]:
        """Tag a batch: same results as ``tag`` one by one, the model applied in one call."""
        compiled = self._compiled
        langs = list(langs) if langs is not None else [None] * len(texts)
        detected = [enrich.detect_language(t) if self.language else None for t in texts]
        effective = [primary_lang(given) or det for given, det in zip(langs, detected, strict=True)]
        matches = [compiled.matcher.match(t, lang) for t, lang in zip(texts, effective, strict=True)]
        probs: list[dict[str, float] | None] = [None] * len(texts)
        model_texts = [""] * len(texts)
        features = None
        if self.model is not None and compiled.thresholds:
            model_texts = [m.normalized.for_model() if m.normalized else "" for m in matches]
            if self._explainer is not None:
                found, features = self.model.predict_with_features(model_texts)
                probs = list(found)
            else:
                probs = list(self.model.predict(model_texts))
        evidence = self._evidence(compiled, texts, matches, model_texts, probs, features)
        results = []
        for i, text in enumerate(texts):
            tags, why, scores = combine(compiled, matches[i], probs[i], evidence[i])
            senti = enrich.sentiment(text, effective[i]) if self.sentiment else None
            results.append(TagResult(tags, why, scores, detected[i], senti))
        return results

    def _evidence(self, compiled: _Compiled, texts: Sequence[str], matches: list[RuleMatch],
                  model_texts: list[str], probs: list[dict[str, float] | None], features: Any) -> list[Evidence]:
        """The evidence of every model tag of a batch, in one pass of the explainer."""
        out: list[Evidence] = [{} for _ in texts]
        if self._explainer is None:
            return out
        # The same compiled taxonomy as the caller's: a reload in between must not change the topics.
        wanted = [model_topics(compiled, m, p) for m, p in zip(matches, probs, strict=True)]
        if not any(wanted):
            return out
        found = self._explainer.evidence(model_texts, wanted, features)
        for i, (text, match) in enumerate(zip(texts, matches, strict=True)):
            normalized = match.normalized
            for topic, ev in found[i].items():
                if normalized is not None:
                    start, end = normalized.model_to_original(ev.start, ev.end)
                    out[i][topic] = ((start, end), text[start:end])
        return out

    def maybe_reload(self) -> bool:
        """Re-read the taxonomy if its file changed; keep the current one if the new one is bad."""
        stat = _stat_key(self.taxonomy_path)
        if stat == self._stat:
            return False
        self._stat = stat  # a bad file is reported once, not on every call
        try:
            data = self.taxonomy_path.read_bytes()
        except OSError as exc:
            log.error("taxonomy %s unreadable, keeping %s: %s", self.taxonomy_path, self.version, exc)
            return False
        if taxonomy_mod.content_hash(data) == self._compiled.taxonomy.content_hash:
            return False
        try:
            compiled = _compile(taxonomy_mod.parse(data, str(self.taxonomy_path)), self.model)
        except (taxonomy_mod.TaxonomyError, model_mod.ModelError, ValueError) as exc:
            log.error("taxonomy %s rejected, keeping %s: %s", self.taxonomy_path, self.version, exc)
            return False
        old = self.version
        self._compiled = compiled
        log.info("taxonomy reloaded: %s -> %s", old, self.version)
        return True


def _warm_up(language: bool, sentiment: bool) -> None:
    if language:
        enrich.detect_language("warm up the language model")
    if sentiment:
        enrich.sentiment("warm up the sentiment model")


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)

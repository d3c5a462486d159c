"""Why the learned tier tagged a post: the word that weighed most for the topic.

A rule tag names the phrase it matched; a model tag should name its evidence too, so an
ops team reading "late_flight (model, 0.71)" also sees *which* word of the post did it.

The TF-IDF pipeline (:mod:`streams.tagging.model`) is linear in its features up to the
final link function, so each feature's share of the topic's log-probability is its value
times the gradient of that log-probability (gradient x input, exact for one logistic
regression and its first-order form for the gate x reasons product). Every feature comes
from one or two words of the post:

- a word unigram from the word it is, a bigram half from each of its two words;
- a character n-gram (``char_wb``: within one word) from the word it sits in.

A feature that occurs several times shares its weight equally among its occurrences. The
word with the largest positive total is the evidence; its span is in the model text
(:meth:`Normalized.for_model`), which the tagger maps back to the post as written.

In a blended model only the TF-IDF member is read: sentence embeddings have no per-word
weights. A topic whose probability comes from the intercept alone has no evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.tagging.model import NO_LABEL, GatedClassifier, TopicModel, tfidf_member

#: distinct words whose features are kept (under 1 kB each, so ~16 MB); it starts over when full
_CACHE_WORDS = 20_000


@dataclass(frozen=True, slots=True)
class Evidence:
    start: int  # span in the model text
    end: int
    weight: float  # the word's share of the topic's log-probability


class Explainer:
    """Built once per model; :meth:`evidence` is a pure function of its texts."""

    def __init__(self, model: TopicModel) -> None:
        self.topics = model.meta.topics
        words = tfidf_member(model.pipeline)
        self._features = words.named_steps["features"]
        self._clf = words.named_steps["clf"]
        vectorizers = dict(self._features.transformer_list)
        word, char = vectorizers["word"], vectorizers["char"]
        self._word_vocab: dict[str, int] = word.vocabulary_
        tokenize, preprocess = word.build_tokenizer(), word.build_preprocessor()
        self._tokens = lambda w: tokenize(preprocess(w))
        self._char_vocab: dict[str, int] = char.vocabulary_
        self._char_analyzer = char.build_analyzer()
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
        self._classes = [str(c) for c in getattr(self._clf, "classes_", ())]

    def evidence(self, texts: Sequence[str], topics: Sequence[Sequence[str]],
                 features: Any = None) -> list[dict[str, Evidence]]:
        """For each text (model form), the word that weighed most for each topic asked about.

        ``features``: the texts' TF-IDF rows if already computed (``predict_with_features``).
        """
        out: list[dict[str, Evidence]] = [{} for _ in texts]
        rows = [i for i, text in enumerate(texts) if topics[i] and text.strip()]
        if not rows:
            return out
        if features is None:
            x_all = self._features.transform([texts[i] for i in rows]).tocsr()
        else:
            x_all = features.tocsr()[rows]
        split = [_words(texts[i]) for i in rows]
        firsts = set(np.cumsum([0] + [len(words) for words, _starts in split[:-1]]).tolist())
        owners = self._owners([w for words, _starts in split for w in words], firsts)
        owner_rows = np.repeat(np.arange(owners.shape[0]), np.diff(owners.indptr))
        first = 0
        for k, i in enumerate(rows):
            words, starts = split[k]
            lo, hi = owners.indptr[first], owners.indptr[first + len(words)]
            x = x_all[k]
            idx, values = x.indices, x.data.astype(np.float64)
            # This post's words x its present features: how often each word holds each one.
            cols = owners.indices[lo:hi]
            at = np.minimum(np.searchsorted(idx, cols), max(len(idx) - 1, 0))
            held = (idx[at] == cols) if len(idx) else np.zeros(len(cols), dtype=bool)
            mine = np.zeros((len(words), len(idx)))
            np.add.at(mine, (owner_rows[lo:hi][held] - first, at[held]), owners.data[lo:hi][held])
            first += len(words)
            totals = mine.sum(axis=0)
            shares = mine / np.where(totals > 0, totals, 1.0)
            for topic in topics[i]:
                grad = self._gradient(x, idx, topic) if len(idx) else None
                if grad is None:
                    continue
                per_word = shares @ (values * grad)
                best = int(np.argmax(per_word))
                if per_word[best] > 0:
                    out[i][topic] = Evidence(starts[best], starts[best] + len(words[best]), float(per_word[best]))
        return out

    def _owners(self, words: list[str], firsts: set[int]) -> Any:
        """words x features: how often each word holds each feature (a bigram half in each word).

        ``words`` are the words of several posts, one post after another; ``firsts`` are the
        positions where a post starts, where no bigram joins a word to the one before.
        """
        from scipy import sparse

        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        bigram_rows: list[int] = []
        bigram_cols: list[int] = []
        previous: tuple[str, int] | None = None
        for j, word in enumerate(words):
            features, counts, tokens = self._word_features(word)
            rows.append(np.full(len(features), j, dtype=np.int64))
            cols.append(features)
            vals.append(counts)
            if j in firsts:
                previous = None
            for tok in tokens:
                if previous is not None:
                    f = self._word_vocab.get(f"{previous[0]} {tok}")
                    if f is not None:
                        bigram_rows += [previous[1], j]
                        bigram_cols += [f, f]
                previous = (tok, j)
        rows.append(np.asarray(bigram_rows, dtype=np.int64))
        cols.append(np.asarray(bigram_cols, dtype=np.int64))
        vals.append(np.full(len(bigram_rows), 0.5))
        shape = (len(words), len(self._word_vocab) + len(self._char_vocab))
        return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape)

    def _word_features(self, word: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """One word's unigram and character n-gram features (column, count), and its tokens.

        Cached: a stream's words repeat (Zipf), and the n-grams are the costly part.
        """
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        tokens = self._tokens(word)
        counts: dict[int, float] = {}
        for tok in tokens:
            f = self._word_vocab.get(tok)
            if f is not None:
                counts[f] = counts.get(f, 0.0) + 1.0
        offset = len(self._word_vocab)
        for gram in self._char_analyzer(word):
            f = self._char_vocab.get(gram)
            if f is not None:
                counts[offset + f] = counts.get(offset + f, 0.0) + 1.0
        entry = (np.fromiter(counts.keys(), dtype=np.int64, count=len(counts)),
                 np.fromiter(counts.values(), dtype=np.float64, count=len(counts)), tokens)
        if len(self._cache) >= _CACHE_WORDS:
            self._cache.clear()
        self._cache[word] = entry
        return entry

    def _gradient(self, x: Any, idx: np.ndarray, topic: str) -> np.ndarray | None:
        """d log P(topic) / d feature, at the present features only."""
        clf = self._clf
        if isinstance(clf, GatedClassifier):
            gate = _log_prob_gradient(clf.gate_, x, idx, True)
            if clf.reasons_ is None or gate is None:
                return gate
            reason = _log_prob_gradient(clf.reasons_, x, idx, topic)
            return None if reason is None else gate + reason
        if self._classes and topic in self._classes and topic != NO_LABEL:
            return _log_prob_gradient(clf, x, idx, topic)  # one multinomial model
        estimators = getattr(clf, "estimators_", None)  # one binary model per topic
        if estimators is not None and topic in self.topics:
            est = estimators[self.topics.index(topic)]
            if hasattr(est, "coef_"):
                return _log_prob_gradient(est, x, idx, 1)
        return None


def _words(text: str) -> tuple[list[str], list[int]]:
    """The space-separated words of a model-form text, with their offsets."""
    words, starts, pos = [], [], 0
    for word in text.split(" "):
        if word:
            words.append(word)
            starts.append(pos)
        pos += len(word) + 1
    return words, starts


def _log_prob_gradient(lr: Any, x: Any, idx: np.ndarray, label: Any) -> np.ndarray | None:
    """Gradient of log P(label | x) of a fitted logistic regression, at columns ``idx``."""
    classes = list(lr.classes_)
    if label not in classes:
        return None
    weights = np.asarray(lr.coef_)[:, idx]
    scores = np.asarray(x @ lr.coef_.T).ravel() + lr.intercept_
    if len(classes) == 2:  # one row of weights, for classes[1]
        p1 = 1.0 / (1.0 + np.exp(-scores[0]))
        return (1.0 - p1) * weights[0] if label == classes[1] else -p1 * weights[0]
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    return weights[classes.index(label)] - probs @ weights

"""The learned tier: a linear text classifier trained from labelled posts.

TF-IDF over word 1-2-grams and character 2-5-grams (within words, so spelling variants
and hashtag fragments still share features), then logistic regression. Linear models
are small, fast to apply to one post, and their weights can be read when a tag needs
explaining.

Two shapes, chosen from the labels (``params["exclusive"]``, default ``"auto"``):

- labels that exclude each other (no post carries more than one, as when annotators
  pick *the* reason for a complaint): by default two stages (``params["gated"]``): a
  binary gate, "does the post carry any label at all" (every post teaches it), times one
  multinomial regression over the labels, fitted on labelled posts only, so the reasons
  compete for a post without also having to tell a complaint from chatter. Labels outside
  the taxonomy ("Can't Tell") count for the gate and compete as reasons, so they still
  teach the model what is not a topic. With ``gated`` off, one multinomial regression over
  every label plus "no label";
- otherwise one binary regression per topic (one-vs-rest).

Optionally (``params["embedding"]``), a second pipeline of the same shape reads sentence
embeddings (all-MiniLM-L6-v2, see :mod:`streams.tagging.encoder`) instead of TF-IDF, and
the model's probability is the weighted mean of the two (``embedding_weight`` for the
embeddings). It costs tens of posts per second per core to encode, so it suits
backtests and moderate streams; the TF-IDF tier alone runs at thousands per second.
Also optionally (``params["fine_tune"]``, exclusive labels only), the encoder itself is
fine-tuned on the labels (:mod:`streams.tagging.finetune`) and joins the blend with
``fine_tune_weight`` of it; the other members keep their proportions of the rest.

Each topic gets its own threshold, chosen on cross-validated predictions over the
training rows only, for the decision the tagger actually makes ("a rule matched, or the
model's probability is at or above the threshold"), so the threshold accounts for what
the rules already catch.

A model file is a joblib pickle: load only model files you made or trust. Its metadata
(version, taxonomy it was trained for, topics, thresholds, training size) is also written
beside it as ``MODEL.json`` so it can be read without unpickling.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: no gated classifier; its files still load


class ModelError(ValueError):
    """The model file cannot be read, or does not fit the taxonomy."""


@dataclass(frozen=True)
class ModelMeta:
    version: str
    taxonomy: str | None  # taxonomy name it was trained for
    taxonomy_hash: str | None
    topics: tuple[str, ...]
    thresholds: dict[str, float]
    trained_at: str
    examples: int
    positives: dict[str, int]
    params: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT


@dataclass(frozen=True)
class TopicModel:
    pipeline: Any  # sklearn Pipeline (features -> classifier), or a Blend of two
    meta: ModelMeta

    @property
    def version(self) -> str:
        return self.meta.version

    def predict(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Probability per topic for each text (texts in model form, see Normalized.for_model)."""
        return self.predict_with_features(texts)[0]

    def predict_one(self, text: str) -> dict[str, float]:
        return self.predict([text])[0]

    def predict_with_features(self, texts: Sequence[str]) -> tuple[list[dict[str, float]], Any]:
        """:meth:`predict`, and the TF-IDF features of the texts (one sparse row each).

        The explainer (:mod:`streams.tagging.explain`) reads the same features, so a tagger
        that explains its model tags computes them once.
        """
        texts = list(texts)
        if not texts:
            return [], None
        words = tfidf_member(self.pipeline)
        features = words.named_steps["features"].transform(texts)
        probs = np.asarray(words.named_steps["clf"].predict_proba(features))
        if isinstance(self.pipeline, Blend):  # the other members score the texts; this one is known
            probs = self.pipeline.predict_proba(texts, known={"tfidf": probs})
        columns = _topic_columns(getattr(self.pipeline, "classes_", None), probs, self.meta.topics)
        topics = self.meta.topics
        return [{t: float(p) for t, p in zip(topics, row, strict=True)} for row in columns], features

    def save(self, path: Path) -> None:
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"format": FORMAT, "pipeline": self.pipeline, "meta": asdict(self.meta)}, path, compress=("xz", 6))
        path.with_suffix(".json").write_text(json.dumps(asdict(self.meta), indent=2, sort_keys=True) + "\n")


def load(path: Path) -> TopicModel:
    import joblib

    try:
        blob = joblib.load(Path(path))
    except FileNotFoundError as exc:
        raise ModelError(f"no model file {path}") from exc
    except Exception as exc:  # a truncated or foreign pickle fails in many ways
        raise ModelError(f"cannot read model {path}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") not in READABLE_FORMATS:
        raise ModelError(f"{path}: not an earful model (format {FORMAT})")
    meta = dict(blob["meta"])
    meta["topics"] = tuple(meta["topics"])
    params = meta.get("params") or {}
    if params.get("embedding"):  # fail now, not on the first post
        from streams.tagging import encoder

        try:
            installed = encoder.load(params["embedding"]).fingerprint
        except encoder.EncoderError as exc:
            raise ModelError(f"{path}: {exc}") from exc
        if installed != params.get("embedding_fingerprint"):
            raise ModelError(f"{path} was trained with sentence encoder {params.get('embedding_fingerprint')}, "
                             f"but {installed} is installed: {encoder.INSTALL_HINT}, or retrain")
    for _name, member, _weight in getattr(blob["pipeline"], "members", ()):
        if hasattr(member, "encoder"):  # a fine-tuned member: its numpy encoder now, not on the first post
            member.encoder()
    return TopicModel(blob["pipeline"], ModelMeta(**meta))


DEFAULT_PARAMS: dict[str, Any] = {
    "word_max_features": 20000,
    "char_max_features": 30000,
    "C": 8.0,
    "class_weight": "balanced",
    "cv_folds": 5,
    "exclusive": "auto",
    "gated": True,  # exclusive labels: "any label?" gate x reasons among labelled posts
    "gate_C": 4.0,
    # Optional sentence-embedding tier (streams.tagging.encoder): None, or an encoder name.
    "embedding": None,
    "embedding_weight": 0.2,  # its share of the blended probability (airline train CV: 0.2 > 0.3 > 0.4)
    "embedding_C": 4.0,
    # Optional fine-tuned encoder (streams.tagging.finetune): 0, or the epochs to train it.
    "fine_tune": 0,
    # Its share of the blend (the others keep their proportions). Airline train split, 5-fold
    # CV, TF-IDF + fine-tuned: 0.3 (0.557) > 0.35 > 0.25 > 0.4 > 0.2 (0.548).
    "fine_tune_weight": 0.3,
}
NO_LABEL = ""  # the class of a post without a label, in the exclusive shape


def _topic_columns(classes: Any, probs: np.ndarray, topics: Sequence[str]) -> np.ndarray:
    """Probabilities in topic order; an exclusive model's classes also hold non-topics."""
    if classes is None or np.asarray(classes).dtype.kind not in "UO":
        return probs  # one-vs-rest: columns are the topics already
    index = {str(c): i for i, c in enumerate(classes)}
    # A topic missing from the classes (too rare to reach every cross-validation fold) scores 0.
    return np.stack([probs[:, index[t]] if t in index else np.zeros(len(probs)) for t in topics], axis=1)


class GatedClassifier:
    """P(label) = P(post has a label) x P(label | post has one), for exclusive labels.

    ``classes_`` are the labels plus :data:`NO_LABEL`, like the single multinomial model's,
    so the two are used the same way. Follows the scikit-learn estimator protocol (params in
    ``__init__``, ``fit``, ``predict_proba``) so cross-validation can clone it.
    """

    def __init__(self, C: float = 8.0, gate_C: float = 4.0, class_weight: Any = "balanced") -> None:
        self.C = C
        self.gate_C = gate_C
        self.class_weight = class_weight

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"C": self.C, "gate_C": self.gate_C, "class_weight": self.class_weight}

    def set_params(self, **params: Any) -> GatedClassifier:
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def __sklearn_tags__(self) -> Any:  # scikit-learn is imported only when a model is used
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags())

    def fit(self, X: Any, y: Sequence[str]) -> GatedClassifier:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        labelled = y != NO_LABEL
        if labelled.all() or not labelled.any():
            raise ModelError("a gated model needs posts with and without a label")
        self.gate_ = LogisticRegression(C=self.gate_C, max_iter=3000).fit(X, labelled)
        reasons = np.unique(y[labelled])
        if len(reasons) > 1:
            self.reasons_: Any = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=3000)
            self.reasons_.fit(X[labelled], y[labelled])
        else:  # a single label: the gate alone decides
            self.reasons_ = None
        self.classes_ = np.array([NO_LABEL, *reasons])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        gate = self.gate_.predict_proba(X)[:, list(self.gate_.classes_).index(True)]
        reasons = self.reasons_.predict_proba(X) if self.reasons_ is not None else np.ones((len(gate), 1))
        return np.column_stack([1.0 - gate, reasons * gate[:, None]])

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])


class Blend:
    """The weighted mean of the probabilities of pipelines fitted on the same labels.

    The TF-IDF pipeline sees the words a post uses; the sentence-embedding pipeline sees
    what it means, so a paraphrase with none of the training words still scores. Their
    errors differ: on the airline posts, the blend beat the TF-IDF model alone on every
    cross-validation seed tried.
    """

    def __init__(self, members: Sequence[tuple[str, Any, float]]) -> None:
        self.members = list(members)

    def fit(self, X: Any, y: Any) -> Blend:
        classes = None
        for name, estimator, _weight in self.members:
            estimator.fit(X, y)
            mine = np.asarray(estimator.classes_)
            if classes is not None and not np.array_equal(mine, classes):
                raise ModelError(f"blend member {name} learned other classes")
            classes = mine
        self.classes_ = classes
        return self

    def predict_proba(self, X: Any, known: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The weighted mean; ``known`` holds members' probabilities already computed, by name."""
        known = known or {}
        total = sum(weight for _name, _estimator, weight in self.members)
        return sum(weight / total * (known[name] if name in known else np.asarray(estimator.predict_proba(X)))
                   for name, estimator, weight in self.members)


def tfidf_member(pipeline: Any) -> Any:
    """The TF-IDF pipeline of a model: the model itself, or the ``tfidf`` member of a Blend."""
    for name, estimator, _weight in getattr(pipeline, "members", ()):
        if name == "tfidf":
            return estimator
    return pipeline


def _classifier(params: dict[str, Any], exclusive: bool, C: float, gate_C: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    if exclusive and params["gated"]:
        return GatedClassifier(C=C, gate_C=gate_C, class_weight=params["class_weight"])
    if exclusive:
        return LogisticRegression(C=C, class_weight=params["class_weight"], max_iter=3000)
    return OneVsRestClassifier(
        LogisticRegression(C=C, class_weight=params["class_weight"], max_iter=2000, solver="liblinear")
    )


def _pipeline(params: dict[str, Any], exclusive: bool = False,
              progress: Callable[[str], None] | None = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                                     max_features=params["word_max_features"], dtype=np.float32)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True,
                                     max_features=params["char_max_features"], dtype=np.float32)),
        ]
    )
    words = Pipeline([("features", features),
                      ("clf", _classifier(params, exclusive, params["C"], params["gate_C"]))])
    members: list[tuple[str, Any, float]] = [("tfidf", words, 1.0)]
    if params.get("embedding"):
        from streams.tagging.encoder import SentenceEmbedding

        meaning = Pipeline([("embed", SentenceEmbedding(params["embedding"])),
                            ("clf", _classifier(params, exclusive, params["embedding_C"], params["embedding_C"]))])
        weight = float(params["embedding_weight"])
        members = [("tfidf", words, 1.0 - weight), ("embedding", meaning, weight)]
    if params.get("fine_tune"):
        from streams.tagging.finetune import FineTunedClassifier

        weight = float(params["fine_tune_weight"])
        members = [(name, estimator, share * (1.0 - weight)) for name, estimator, share in members]
        members.append(("fine_tuned", FineTunedClassifier(epochs=int(params["fine_tune"]), progress=progress), weight))
    return words if len(members) == 1 else Blend(members)


def _best_threshold(y: np.ndarray, prob: np.ndarray, ruled: np.ndarray) -> float:
    best_t, best_f1 = 0.5, -1.0
    for t in np.arange(0.05, 0.96, 0.025):
        pred = ruled | (prob >= t)
        tp = int((pred & y).sum())
        fp = int((pred & ~y).sum())
        fn = int((~pred & y).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best_f1:
            best_t, best_f1 = float(round(t, 3)), f1
    return best_t


def _encode_ahead(texts: Sequence[str], name: str, say: Callable[[str], None]) -> str:
    """Encode every training text once, up front, with progress: the folds then hit the cache."""
    from streams.tagging import encoder

    try:
        enc = encoder.load(name)
    except encoder.EncoderError as exc:
        raise ModelError(str(exc)) from exc
    unique = len(set(texts))
    say(f"encoding {unique} distinct texts with {enc.fingerprint} (the slow part: tens per second per core)")
    done, step = 0, max(500, unique // 10)
    shown = 0

    def tick(n: int) -> None:
        nonlocal done, shown
        done += n
        if done - shown >= step or done == unique:
            shown = done
            say(f"  encoded {done}/{unique}")

    enc.encode(texts, progress=tick)
    return enc.fingerprint


def train(
    texts: Sequence[str],
    labels: Sequence[frozenset[str]],
    topics: Sequence[str],
    *,
    rule_hits: Sequence[frozenset[str]] | None = None,
    taxonomy: str | None = None,
    taxonomy_hash: str | None = None,
    name: str = "model",
    params: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TopicModel:
    """Fit on (model-form) texts; ``rule_hits`` are the topics the rules tag per text."""
    from sklearn.model_selection import KFold, StratifiedKFold

    p = {**DEFAULT_PARAMS, **(params or {})}
    topics = tuple(sorted(t for t in set(topics) if any(t in ls for ls in labels)))
    if not topics:
        raise ModelError("no labelled examples for any topic")
    exclusive = p["exclusive"]
    if exclusive == "auto":
        exclusive = all(len(ls) <= 1 for ls in labels)
    elif exclusive and any(len(ls) > 1 for ls in labels):
        raise ModelError("exclusive model asked for, but some posts carry several labels")
    p["exclusive"] = bool(exclusive)
    y = np.array([[t in ls for t in topics] for ls in labels], dtype=bool)
    ruled = np.array(
        [[t in hits for t in topics] for hits in (rule_hits or [frozenset()] * len(texts))], dtype=bool
    )
    say = progress or (lambda _msg: None)
    target: np.ndarray
    if p["exclusive"]:
        target = np.array([next(iter(ls)) if ls else NO_LABEL for ls in labels])
        folds: Any = StratifiedKFold(n_splits=p["cv_folds"], shuffle=True, random_state=0)
    else:
        target = y.astype(int)
        folds = KFold(n_splits=p["cv_folds"], shuffle=True, random_state=0)
    if p["exclusive"]:
        p["gated"] = bool(p["gated"]) and NO_LABEL in target and len(set(target)) > 1
        shape = "a gate times one multinomial model" if p["gated"] else "one multinomial model"
    else:
        shape = "one model per topic"
    texts = list(texts)
    if p["fine_tune"]:  # before minutes of other work
        if not p["exclusive"]:
            raise ModelError("fine-tuning needs labels that exclude each other (at most one per post)")
        from streams.tagging import finetune

        try:
            finetune.check()
        except finetune.FineTuneError as exc:
            raise ModelError(str(exc)) from exc
    if p["embedding"]:
        p["embedding_fingerprint"] = _encode_ahead(texts, p["embedding"], say)
        shape += f", blended with sentence embeddings ({p['embedding_weight']:g})"
    if p["fine_tune"]:
        shape += (f", blended with the sentence encoder fine-tuned for {p['fine_tune']} epochs"
                  f" ({p['fine_tune_weight']:g}; minutes per fold)")
    say(f"cross-validating {len(texts)} examples, {len(topics)} topics, {shape}")
    cv_prob = np.zeros((len(texts), len(topics)))
    for number, (fit_rows, held_rows) in enumerate(folds.split(texts, target), 1):
        if p["fine_tune"]:
            say(f"fold {number} of {p['cv_folds']}")
        fold = _pipeline(p, p["exclusive"], say).fit([texts[i] for i in fit_rows], target[fit_rows])
        held = np.asarray(fold.predict_proba([texts[i] for i in held_rows]))
        cv_prob[held_rows] = _topic_columns(getattr(fold, "classes_", None), held, topics)
    thresholds = {t: _best_threshold(y[:, i], cv_prob[:, i], ruled[:, i]) for i, t in enumerate(topics)}
    say("fitting on all training examples")
    pipeline = _pipeline(p, p["exclusive"], say).fit(list(texts), target)
    digest = hashlib.sha256()
    digest.update(json.dumps([taxonomy_hash, p, topics], sort_keys=True).encode())
    for text, ls in zip(texts, labels, strict=True):
        digest.update(text.encode() + b"\x1f" + ",".join(sorted(ls)).encode() + b"\x1e")
    meta = ModelMeta(
        version=f"{name}@{digest.hexdigest()[:8]}",
        taxonomy=taxonomy,
        taxonomy_hash=taxonomy_hash,
        topics=topics,
        thresholds=thresholds,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        examples=len(texts),
        positives={t: int(y[:, i].sum()) for i, t in enumerate(topics)},
        params=p,
    )
    return TopicModel(pipeline, meta)

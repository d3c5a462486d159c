"""Model tags name their evidence: the word that weighed most, with its span in the post."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.tagging import Tagger, explain
from streams.tagging import model as model_mod
from streams.tagging import tagger as tagger_mod
from streams.tagging.normalize import normalize
from tests.unit.tagging.test_model_cli import _toy_model

SHAPES = {
    "gated": {},
    "multinomial": {"gated": False},
    "one-vs-rest": {"exclusive": False},
}


@pytest.fixture(scope="module", params=list(SHAPES))
def toy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _toy_model(tmp_path_factory.mktemp(request.param), **SHAPES[request.param])


@pytest.mark.parametrize(
    ("post", "topic", "words"),
    [
        ("the portal will not load", "outage", {"portal", "load"}),
        ("Still waiting on my money back from the ATO", "refund", {"money", "waiting"}),
        ("ugh #PortalWillNotLoad again", "outage", {"Portal", "Load"}),
        ("Ça ne marche pas: the PORTAL, again", "outage", {"PORTAL"}),
    ],
)
def test_a_model_tag_names_the_word_of_the_post_that_weighed_most(
    toy: tuple[Path, Path], post: str, topic: str, words: set[str]
) -> None:
    tagger = Tagger.load(*toy, enrich=False)
    result = tagger.tag(post)
    [reason] = [w for w in result.why if w.topic == topic]
    assert reason.tier == "model"
    assert reason.span is not None
    start, end = reason.span
    assert post[start:end] == reason.matched
    assert reason.matched in words


def test_a_post_without_known_words_gives_no_evidence(toy: tuple[Path, Path]) -> None:
    model = model_mod.load(toy[1])
    assert explain.Explainer(model).evidence(["zzz qqq", ""], [["outage", "refund"], ["outage"]]) == [{}, {}]


def test_rule_tags_keep_their_own_span(toy: tuple[Path, Path]) -> None:
    result = Tagger.load(*toy, enrich=False).tag("is mygov down")
    [reason] = [w for w in result.why if w.topic == "outage"]
    assert reason.tier == "rule" and reason.matched == "mygov down" and reason.span == (3, 13)


def _log_prob(clf: Any, x: Any, topic: str, topics: tuple[str, ...]) -> float:
    probs = np.asarray(clf.predict_proba(x))
    classes = getattr(clf, "classes_", None)
    column = model_mod._topic_columns(classes, probs, topics)
    return float(np.log(column[0, topics.index(topic)]))


def test_the_gradient_matches_the_classifier_it_explains(toy: tuple[Path, Path]) -> None:
    """Each shape's analytic gradient of log P(topic) against a finite difference."""
    model = model_mod.load(toy[1])
    ex = explain.Explainer(model)
    x = ex._features.transform(["the portal will not load money"]).tocsr().astype(np.float64)
    idx = x.indices
    for topic in model.meta.topics:
        grad = ex._gradient(x, idx, topic)
        assert grad is not None
        for k, feature in enumerate(idx[:12]):
            step = x.copy()
            step[0, feature] += 1e-5
            numeric = (_log_prob(ex._clf, step, topic, model.meta.topics)
                       - _log_prob(ex._clf, x, topic, model.meta.topics)) / 1e-5
            assert grad[k] == pytest.approx(numeric, rel=1e-3, abs=1e-5)


def test_a_span_of_the_model_text_maps_back_through_opened_hashtags() -> None:
    post = "so #MyGovIsDown and #ATORefundLate today"
    n = normalize(post)
    model_text = n.for_model()
    assert model_text == "so my gov is down and ato refund late today"
    for word in ("my", "gov", "down", "refund", "late", "today"):
        start = model_text.index(word)
        s, e = n.model_to_original(start, start + len(word))
        assert post[s:e].lower() == word


def test_a_batch_explains_each_post_as_if_it_were_alone(toy: tuple[Path, Path]) -> None:
    """A post's last word and the next post's first make no bigram ("... the" + "portal ...")."""
    tagger = Tagger.load(*toy, enrich=False)
    posts = ["will my money come back to the", "portal will not load", "money from the", "portal", "load"]
    assert tagger.tag_many(posts) == [tagger.tag(p) for p in posts]
    ex = explain.Explainer(model_mod.load(toy[1]))
    pair = ["money back from the", "portal will not load the portal"]
    texts = [normalize(p).for_model() for p in pair]
    topics = [["refund", "outage"], ["refund", "outage"]]
    together = ex.evidence(texts, topics)
    alone = [ex.evidence([t], [ts])[0] for t, ts in zip(texts, topics, strict=True)]
    assert together == alone and together[1]


def test_an_empty_batch_is_an_empty_result(toy: tuple[Path, Path]) -> None:
    assert Tagger.load(*toy, enrich=False).tag_many([]) == []


def test_a_taxonomy_reloaded_during_a_call_leaves_that_calls_evidence_alone(
        toy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    tagger = Tagger.load(*toy, enrich=False)
    predict = model_mod.TopicModel.predict_with_features
    without_model = tagger_mod._compile(tagger.taxonomy, None)  # a reload that leaves no model topic

    def reload_meanwhile(self: model_mod.TopicModel, texts: Any) -> Any:
        tagger._compiled = without_model
        return predict(self, texts)

    monkeypatch.setattr(model_mod.TopicModel, "predict_with_features", reload_meanwhile)
    [result] = tagger.tag_many(["the portal will not load"])
    [reason] = result.why
    assert reason.tier == "model" and reason.matched in {"portal", "load"}


def test_evidence_can_be_turned_off(toy: tuple[Path, Path]) -> None:
    tagger = Tagger.load(*toy, enrich=False, explain=False)
    [reason] = tagger.tag("the portal will not load").why
    assert reason.tier == "model" and reason.span is None and reason.matched is None


def test_predicting_with_features_scores_as_predict_does(toy: tuple[Path, Path]) -> None:
    model = model_mod.load(toy[1])
    texts = ["the portal will not load", "money from my return", "footy on tonight", ""]
    probs, features = model.predict_with_features(texts)
    for mine, theirs in zip(probs, model.predict(texts), strict=True):
        assert mine == pytest.approx(theirs)
    assert features.shape[0] == len(texts)


def test_a_blended_model_explains_with_its_tfidf_member(tmp_path: Path) -> None:
    tax_path, out = _toy_model(tmp_path, embedding="minilm")
    model = model_mod.load(out)
    texts = ["the portal will not load", "money from my return"]
    for mine, theirs in zip(model.predict_with_features(texts)[0], model.predict(texts), strict=True):
        assert mine == pytest.approx(theirs)
    [reason] = Tagger.load(tax_path, out, enrich=False).tag("the portal will not load").why
    assert reason.tier == "model" and reason.matched in {"portal", "load"}

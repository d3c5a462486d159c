"""The tagger's precedence (see streams/tagging/tagger.py), with a stand-in model of fixed
probabilities so every threshold is exact."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from streams.tagging import Tagger
from streams.tagging import model as model_mod
from streams.tagging import tagger as tagger_mod
from streams.tagging import taxonomy as taxonomy_mod


class FixedModel:
    """What the Tagger uses of a TopicModel (meta, version, predict); every post gets ``probs``."""

    def __init__(self, probs: dict[str, float], thresholds: dict[str, float], taxonomy: str) -> None:
        self.probs = dict(probs)
        self.meta = model_mod.ModelMeta(
            version="fixed-1",
            taxonomy=taxonomy,
            taxonomy_hash=None,
            topics=tuple(probs),
            thresholds=dict(thresholds),
            trained_at="2024-01-01T00:00:00Z",
            examples=0,
            positives={},
        )

    @property
    def version(self) -> str:
        return self.meta.version

    def predict(self, texts: Sequence[str]) -> list[dict[str, float]]:
        return [dict(self.probs) for _ in texts]


def _tagger(
    tmp_path: Path,
    yaml: str,
    probs: dict[str, float] | None = None,
    thresholds: dict[str, float] | None = None,
    *,
    language: bool = False,
) -> Tagger:
    path = tmp_path / "tax.yaml"
    path.write_text(yaml)
    tax = taxonomy_mod.load(path)
    model = FixedModel(probs, thresholds or {}, tax.name) if probs is not None else None
    return Tagger(
        path,
        tagger_mod._compile(tax, model),  # type: ignore[arg-type]
        model,  # type: ignore[arg-type]
        language=language,
        sentiment=False,
        explain=False,  # evidence needs a real sklearn pipeline
    )


# --- ancestors -------------------------------------------------------------------------

CHAIN = """
name: chain
topics:
  root: {}
  mid:
    parent: root
    exclude: [mid veto]
  leaf:
    parent: mid
    phrases: [leaf word]
"""


def test_an_excluded_parent_stops_the_climb_to_the_ancestors_above_it(tmp_path: Path) -> None:
    tagger = _tagger(tmp_path, CHAIN)
    assert tagger.tag("leaf word").tags == ["leaf", "mid", "root"]  # the climb, unvetoed

    result = tagger.tag("leaf word, mid veto")
    assert result.tags == ["leaf"]
    assert result.scores == {"leaf": 1.0}
    assert [w.topic for w in result.why] == ["leaf"]


def test_a_model_tag_climbs_until_an_excluded_parent_too(tmp_path: Path) -> None:
    tagger = _tagger(tmp_path, CHAIN, probs={"leaf": 0.9})
    assert tagger.tag("nothing the rules know").scores == {"leaf": 0.9, "mid": 0.9, "root": 0.9}
    assert tagger.tag("nothing the rules know but mid veto").scores == {"leaf": 0.9}


# --- the model tier ----------------------------------------------------------------------

MODEL_TAX = """
name: modelled
topics:
  billing:
    exclude: [just kidding]
  outage:
    phrases: [site down]
"""


def test_the_model_never_tags_an_excluded_topic(tmp_path: Path) -> None:
    tagger = _tagger(tmp_path, MODEL_TAX, probs={"billing": 0.99, "outage": 0.0})
    assert tagger.tag("my bill doubled").tags == ["billing"]

    result = tagger.tag("my bill doubled, just kidding")
    assert result.tags == []
    assert result.why == []


@pytest.mark.parametrize(
    ("prob", "tagged"),
    [(0.5, True), (0.4999, False), (0.5001, True)],
)
def test_a_probability_at_the_threshold_tags(tmp_path: Path, prob: float, tagged: bool) -> None:
    tagger = _tagger(tmp_path, MODEL_TAX, probs={"billing": prob, "outage": 0.0}, thresholds={"billing": 0.5})
    result = tagger.tag("my bill doubled")
    if tagged:
        assert result.tags == ["billing"]
        assert result.scores == {"billing": prob}
        [reason] = result.why
        assert (reason.topic, reason.rule, reason.tier, reason.score) == ("billing", "billing.model", "model", prob)
    else:
        assert result.tags == []


def test_a_rule_match_scores_one_whatever_the_model_says(tmp_path: Path) -> None:
    tagger = _tagger(tmp_path, MODEL_TAX, probs={"billing": 0.0, "outage": 0.7})
    result = tagger.tag("the site down again")
    assert result.tags == ["outage"]
    assert result.scores == {"outage": 1.0}
    assert [w.tier for w in result.why] == ["rule"]


OWN_THRESHOLDS = """
name: thresholds
topics:
  strict: {threshold: 0.8}
  lenient: {threshold: 0.3}
  tuned: {}
  default: {}
"""


def test_the_taxonomys_own_threshold_beats_the_models(tmp_path: Path) -> None:
    tagger = _tagger(
        tmp_path,
        OWN_THRESHOLDS,
        probs={"strict": 0.6, "lenient": 0.3, "tuned": 0.7, "default": 0.5},
        # The model's tuned thresholds would tag "strict" and leave "lenient"; the taxonomy's don't.
        thresholds={"strict": 0.5, "lenient": 0.9, "tuned": 0.7},
    )
    assert tagger._compiled.thresholds == {"strict": 0.8, "lenient": 0.3, "tuned": 0.7, "default": 0.5}
    assert tagger.tag("anything at all").tags == ["default", "lenient", "tuned"]


# --- language ------------------------------------------------------------------------------

LANG_TAX = """
name: langs
topics:
  refund:
    terms: {es: [reembolso]}
"""
ENGLISH_POST = "still waiting on my reembolso from the tax office, it has been three weeks now"


def test_the_callers_lang_beats_the_detected_one(tmp_path: Path) -> None:
    tagger = _tagger(tmp_path, LANG_TAX, language=True)
    result = tagger.tag(ENGLISH_POST, "es")
    assert result.detected_lang == "en"  # the premise: detection says English
    assert result.tags == ["refund"]
    assert [w.rule for w in result.why] == ["refund.terms.es"]


def test_the_detected_lang_is_used_when_the_caller_gives_none(tmp_path: Path) -> None:
    tagger = _tagger(tmp_path, LANG_TAX, language=True)
    result = tagger.tag(ENGLISH_POST)
    assert result.detected_lang == "en"
    assert result.tags == []  # Spanish terms do not apply to a post detected as English

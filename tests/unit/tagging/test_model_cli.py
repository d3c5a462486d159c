"""The learned tier and the batch commands: train, load, tag, eval."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from streams.cli import cli
from streams.tagging import Tagger, dataset, encoder, evaluate
from streams.tagging import model as model_mod
from streams.tagging import taxonomy as taxonomy_mod
from streams.tagging.normalize import normalize

ROOT = Path(__file__).resolve().parents[3]
AIRLINE = ROOT / "deploy" / "taxonomies" / "airline.yaml"
SMALL_PARAMS = {"cv_folds": 3, "word_max_features": 4000, "char_max_features": 6000}

TOY = b"""
name: toy
topics:
  refund:
    phrases: [where is my refund]
  outage:
    phrases: [mygov down]
"""
TOY_ROWS = [
    ("still waiting on the money back from my return", "refund"),
    ("money from my return never arrived", "refund"),
    ("when does the return money land", "refund"),
    ("my return money is weeks late", "refund"),
    ("site will not load at all", "outage"),
    ("the portal will not load tonight", "outage"),
    ("portal keeps failing to load", "outage"),
    ("nothing will load on the site", "outage"),
    ("lovely weather today", ""),
    ("had a great lunch", ""),
    ("footy on tonight", ""),
    ("new phone who dis", ""),
]


def _toy_model(tmp_path: Path, progress: Callable[[str], None] | None = None,
               **params: Any) -> tuple[Path, Path]:
    tax_path = tmp_path / "toy.yaml"
    tax_path.write_bytes(TOY)
    tax = taxonomy_mod.load(tax_path)
    texts = [normalize(t).for_model() for t, _ in TOY_ROWS * 3]
    labels = [frozenset([lab]) if lab else frozenset() for _, lab in TOY_ROWS * 3]
    model = model_mod.train(texts, labels, ["refund", "outage"], taxonomy=tax.name, taxonomy_hash=tax.content_hash,
                            name="toy", params={"cv_folds": 3, "C": 4.0, **params}, progress=progress)
    out = tmp_path / "models" / "toy.joblib"
    model.save(out)
    return tax_path, out


def test_a_model_round_trips_with_its_version_and_taxonomy(tmp_path: Path) -> None:
    tax_path, out = _toy_model(tmp_path)
    loaded = model_mod.load(out)
    assert loaded.version.startswith("toy@")
    assert loaded.meta.taxonomy == "toy"
    assert loaded.meta.topics == ("outage", "refund")
    assert loaded.meta.params["exclusive"] is True  # one label per post
    assert loaded.meta.params["gated"] is True  # "any label?" gate x reasons
    assert orjson.loads(out.with_suffix(".json").read_bytes())["version"] == loaded.version

    tagger = Tagger.load(tax_path, out, enrich=False)
    assert tagger.version == f"{tagger.taxonomy.version}+{loaded.version}"
    result = tagger.tag("the portal will not load")
    assert result.tags == ["outage"]
    [reason] = result.why
    assert reason.tier == "model" and reason.rule == "outage.model"
    assert reason.score == result.scores["outage"] >= loaded.meta.thresholds["outage"]


def test_a_rule_match_wins_over_the_model(tmp_path: Path) -> None:
    tax_path, out = _toy_model(tmp_path)
    result = Tagger.load(tax_path, out, enrich=False).tag("mygov down")
    assert "outage" in result.tags and result.scores["outage"] == 1.0
    assert any(w.tier == "rule" and w.matched == "mygov down" for w in result.why)


def test_a_model_for_another_taxonomy_is_refused(tmp_path: Path) -> None:
    _, out = _toy_model(tmp_path)
    with pytest.raises(model_mod.ModelError, match="trained for taxonomy 'toy'"):
        Tagger.load(AIRLINE, out, enrich=False)


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.joblib"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(model_mod.ModelError):
        model_mod.load(bad)
    with pytest.raises(model_mod.ModelError, match="no model file"):
        model_mod.load(tmp_path / "missing.joblib")


def test_the_gated_model_splits_probability_between_no_label_and_the_labels() -> None:
    texts = [normalize(t).for_model() for t, _ in TOY_ROWS * 3]
    labels = [frozenset([lab]) if lab else frozenset() for _, lab in TOY_ROWS * 3]
    gated = model_mod.train(texts, labels, ["refund", "outage"], params={"cv_folds": 3, "C": 4.0})
    single = model_mod.train(texts, labels, ["refund", "outage"], params={"cv_folds": 3, "C": 4.0, "gated": False})
    assert gated.meta.params["gated"] is True and single.meta.params["gated"] is False
    raw = gated.pipeline.predict_proba(["the portal will not load", "lovely weather"])
    assert list(gated.pipeline.classes_) == [model_mod.NO_LABEL, "outage", "refund"]
    assert np.allclose(raw.sum(axis=1), 1.0)
    for m in (gated, single):
        outage, chatter = m.predict(["the portal will not load", "lovely weather today"])
        assert outage["outage"] > 0.5 > outage["refund"]
        assert max(chatter.values()) < 0.5


def test_a_model_file_of_the_previous_format_still_loads(tmp_path: Path) -> None:
    import joblib

    _, out = _toy_model(tmp_path)
    blob = joblib.load(out)
    joblib.dump({**blob, "format": 1}, out)
    assert model_mod.load(out).meta.topics == ("outage", "refund")
    joblib.dump({**blob, "format": 99}, out)
    with pytest.raises(model_mod.ModelError, match="not an earful model"):
        model_mod.load(out)


def test_one_model_per_topic_when_posts_carry_several_labels() -> None:
    texts = ["refund late and site down", "refund late", "site down", "nice day"] * 4
    labels = [frozenset({"refund", "outage"}), frozenset({"refund"}), frozenset({"outage"}), frozenset()] * 4
    model = model_mod.train(texts, labels, ["refund", "outage"], params={"cv_folds": 2})
    assert model.meta.params["exclusive"] is False
    probs = model.predict_one("refund late and site down")
    assert probs["refund"] > 0.5 and probs["outage"] > 0.5


# --- the commands ---------------------------------------------------------------------


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_tag_writes_one_json_line_per_post(tmp_path: Path) -> None:
    posts = _csv(tmp_path / "posts.csv", [
        {"id": "a", "text": "where is my refund?? 😤"},
        {"id": "b", "text": "nice day for it"},
    ])
    tax = tmp_path / "toy.yaml"
    tax.write_bytes(TOY)
    result = CliRunner().invoke(cli, ["tag", str(posts), "--text-col", "text", "--id-col", "id",
                                      "--taxonomy", str(tax), "--no-enrich"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [set(line) for line in lines] == [{"id", "tags", "scores", "why"}] * 2
    assert lines[0] == {
        "id": "a", "tags": ["refund"], "scores": {"refund": 1.0},
        "why": [{"topic": "refund", "rule": "refund.phrase", "tier": "rule", "span": [0, 18],
                 "matched": "where is my refund"}],
    }
    assert lines[1] == {"id": "b", "tags": [], "scores": {}, "why": []}

    enriched = CliRunner().invoke(cli, ["tag", str(posts), "--text-col", "text", "--taxonomy", str(tax)])
    first = orjson.loads(enriched.stdout.splitlines()[0])
    assert first["detected_lang"] == "en" and isinstance(first["sentiment"], float)


def test_tag_reports_a_missing_column(tmp_path: Path) -> None:
    posts = _csv(tmp_path / "posts.csv", [{"id": "a", "body": "x"}])
    result = CliRunner().invoke(cli, ["tag", str(posts), "--text-col", "text", "--taxonomy", str(AIRLINE)])
    assert result.exit_code != 0 and "no column 'text'" in result.output


def test_eval_prints_per_topic_scores_and_macro_f1(tmp_path: Path) -> None:
    posts = _csv(tmp_path / "labelled.csv", [
        {"text": "where is my refund", "label": "Refund"},
        {"text": "where is my refund again", "label": ""},
        {"text": "mygov down", "label": "Outage"},
        {"text": "portal broken", "label": "Outage"},
        {"text": "hello", "label": "Other Thing"},
    ])
    tax = tmp_path / "toy.yaml"
    tax.write_bytes(TOY)
    result = CliRunner().invoke(cli, ["eval", str(posts), "--text-col", "text", "--label-col", "label",
                                      "--taxonomy", str(tax)])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith("tagger toy@") and out[0].endswith("split all, 5 rows")
    assert out[1] == "labels not scored (negatives for every topic): other_thing"
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert rows["outage"][1:] == ["1.000", "0.500", "0.667", "2", "1", "0", "1"]
    assert rows["refund"][1:] == ["0.500", "1.000", "0.667", "1", "1", "1", "0"]
    assert rows["macro-F1"][1:] == ["0.667", "rows=5"]


def test_train_writes_a_model_that_tag_then_uses(tmp_path: Path) -> None:
    labelled = _csv(tmp_path / "labelled.csv", [{"id": str(i), "text": t, "label": lab}
                                                for i, (t, lab) in enumerate(TOY_ROWS * 4)])
    tax = tmp_path / "toy.yaml"
    tax.write_bytes(TOY)
    out = tmp_path / "toy.joblib"
    result = CliRunner().invoke(cli, ["train", str(labelled), "--text-col", "text", "--label-col", "label",
                                      "--split", "all", "--taxonomy", str(tax), "-o", str(out), "--c", "2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout and "version toy@" in result.stdout
    trained = model_mod.load(out)
    assert trained.meta.params["C"] == 2.0
    # --c regularises the reason classifier (the airline model is trained with --c 4); the gate keeps its own C
    clf = trained.pipeline.named_steps["clf"]
    assert clf.reasons_.C == 2.0 and clf.gate_.C == 4.0  # the default gate_C

    posts = _csv(tmp_path / "posts.csv", [{"text": "the portal will not load"}])
    tagged = CliRunner().invoke(cli, ["tag", str(posts), "--text-col", "text", "--taxonomy", str(tax),
                                      "--model", str(out), "--no-enrich"])
    line = orjson.loads(tagged.stdout)
    assert line["tags"] == ["outage"] and line["why"][0]["tier"] == "model"


def test_the_split_is_stable_and_about_four_to_one() -> None:
    splits = [dataset.split_of(str(i)) for i in range(5000)]
    assert splits == [dataset.split_of(str(i)) for i in range(5000)]
    assert 0.77 < splits.count("train") / 5000 < 0.83


# --- a real model, from the real airline complaints -------------------------------------


def test_a_model_trained_on_real_complaints_beats_the_rules_on_held_out_posts(
    tmp_path: Path, data_dir: Path
) -> None:
    source = data_dir / "airline-sentiment" / "tweets.csv"
    out = tmp_path / "airline.joblib"
    tax = taxonomy_mod.load(AIRLINE)
    rows = list(dataset.read_rows(source, "text", id_col="tweet_id", label_col="negativereason", split="train"))
    topics = sorted(tax.topics)
    model = model_mod.train([normalize(r.text).for_model() for r in rows], [r.labels for r in rows], topics,
                            taxonomy=tax.name, taxonomy_hash=tax.content_hash, name="airline-small",
                            params=SMALL_PARAMS)
    model.save(out)

    held_out = list(dataset.read_rows(source, "text", id_col="tweet_id", label_col="negativereason", split="test"))
    assert held_out and not {r.id for r in held_out} & {r.id for r in rows}
    gold = [r.labels for r in held_out]
    texts = [r.text for r in held_out]
    with_model = Tagger.load(AIRLINE, out, enrich=False)
    rules_only = Tagger.load(AIRLINE, enrich=False)
    assert with_model.model is not None and with_model.model.meta.taxonomy == "airline"
    f1_model = evaluate.macro_f1(evaluate.score([r.tags for r in with_model.tag_many(texts)], gold, topics))
    f1_rules = evaluate.macro_f1(evaluate.score([r.tags for r in rules_only.tag_many(texts)], gold, topics))
    assert f1_model > f1_rules + 0.1, (f1_model, f1_rules)


def _blended_model(tmp_path: Path) -> tuple[Path, Path]:
    said: list[str] = []
    tax_path, out = _toy_model(tmp_path, said.append, embedding="minilm")
    assert any(line.startswith("encoding 12 distinct texts") for line in said)
    return tax_path, out


def test_a_blended_model_round_trips_small_and_scores_the_mean_of_its_two_members(tmp_path: Path) -> None:
    tax_path, out = _blended_model(tmp_path)
    loaded = model_mod.load(out)
    assert loaded.meta.params["embedding"] == "minilm"
    assert loaded.meta.params["embedding_fingerprint"] == encoder.load("minilm").fingerprint
    assert out.stat().st_size < 5_000_000  # the encoder's 90 MB of weights are not in the file
    [words, meaning] = [member for _name, member, _weight in loaded.pipeline.members]
    post = normalize("the government site just will not load for me").for_model()
    blended = loaded.predict_one(post)
    w = loaded.meta.params["embedding_weight"]
    for topic, column in (("outage", 1), ("refund", 2)):  # classes: no label, outage, refund
        expected = (1 - w) * words.predict_proba([post])[0, column] + w * meaning.predict_proba([post])[0, column]
        assert blended[topic] == pytest.approx(expected)
    assert Tagger.load(tax_path, out, enrich=False).tag("the government site just will not load for me").tags \
        == ["outage"]


def test_a_blended_model_will_not_load_beside_other_encoder_weights(tmp_path: Path) -> None:
    _tax_path, out = _blended_model(tmp_path)
    blob = joblib.load(out)
    blob["meta"]["params"]["embedding_fingerprint"] = "all-MiniLM-L6-v2@000000000000"
    joblib.dump(blob, out)
    with pytest.raises(model_mod.ModelError, match="was trained with sentence encoder"):
        model_mod.load(out)

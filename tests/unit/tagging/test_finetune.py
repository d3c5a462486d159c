"""The fine-tuned encoder: trained in PyTorch, run in numpy, carried inside the model file."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch  # make install puts PyTorch (the CPU build) in .venv for these tests
from safetensors.numpy import load_file

from streams.settings import PROJECT_ROOT
from streams.tagging import Tagger, encoder, finetune
from streams.tagging import model as model_mod
from streams.tagging import taxonomy as taxonomy_mod

AIRLINE = PROJECT_ROOT / "deploy" / "taxonomies" / "airline.yaml"

CANCELLED = ["my flight was cancelled again", "they cancelled the 6am flight", "flight cancelled and no rebooking",
             "cancelled flightled, stuck at the gate", "why cancel my flight with no notice"]
LUGGAGE = ["lost my bag in denver", "where is my luggage", "my baggage never arrived",
           "three days and still no suitcase", "bags went to the wrong city"]
OTHER = ["thanks for the great flight", "loved the crew today", "what time does boarding start",
         "is there wifi on board", "nice new planes"]


@pytest.fixture(scope="module")
def fitted() -> finetune.FineTunedClassifier:
    texts = (CANCELLED + LUGGAGE + OTHER) * 3
    y = (["cancelled"] * 5 + ["luggage"] * 5 + [""] * 5) * 3
    return finetune.FineTunedClassifier(epochs=3, learning_rate=1e-4, head_learning_rate=1e-2).fit(texts, y)


def test_fine_tuning_moves_the_encoder_and_learns_the_labels(fitted: finetune.FineTunedClassifier) -> None:
    base = load_file(str(encoder._model_dir() / "model.safetensors"))
    for layer in (0, 5):  # the whole encoder learns, not just the head
        key = f"encoder.layer.{layer}.attention.self.query.weight"
        assert (fitted.weights_[key] != base[key].astype(np.float16)).mean() > 0.5
    probs = fitted.predict_proba(["they cancelled my flight tonight", "my suitcase is lost"])
    classes = list(fitted.classes_)
    assert classes == ["", "cancelled", "luggage"]
    assert probs.argmax(1).tolist() == [classes.index("cancelled"), classes.index("luggage")]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_the_numpy_encoder_runs_what_pytorch_trained(fitted: finetune.FineTunedClassifier) -> None:
    from tokenizers import Tokenizer

    texts = ["a short one", "a somewhat longer post about a cancelled flight and a lost bag, padded"]
    weights = {k: torch.tensor(v.astype(np.float32)) for k, v in fitted.weights_.items()}
    ids, mask = encoder.token_batch(Tokenizer.from_str(fitted.tokenizer_), texts)
    with torch.no_grad():
        pooled = finetune._forward(torch, weights, torch.from_numpy(ids), torch.from_numpy(mask), 0.0).numpy()
    expected = finetune._softmax(fitted.scale * (pooled @ fitted.head_weight_.T + fitted.head_bias_))
    np.testing.assert_allclose(fitted.predict_proba(texts), expected, atol=1e-5)


def test_it_pickles_without_its_encoder_or_progress_and_predicts_the_same(
        fitted: finetune.FineTunedClassifier) -> None:
    fitted.progress = print
    fitted.predict_proba(["warm the encoder"])
    blob = pickle.dumps(fitted)
    fitted.progress = None
    back = pickle.loads(blob)
    assert back.progress is None and "_encoder" not in back.__dict__
    texts = CANCELLED[:2] + LUGGAGE[:2]
    np.testing.assert_array_equal(back.predict_proba(texts), fitted.predict_proba(texts))


def test_a_model_with_the_fine_tuned_member_trains_saves_and_loads(tmp_path: Path) -> None:
    texts = (CANCELLED + LUGGAGE + OTHER) * 2
    labels = [frozenset({"cancelled_flight"})] * 5 + [frozenset({"lost_luggage"})] * 5 + [frozenset()] * 5
    said: list[str] = []
    tax = taxonomy_mod.load(AIRLINE)
    model = model_mod.train(texts, labels * 2, ["cancelled_flight", "lost_luggage"], name="t",
                            taxonomy=tax.name, taxonomy_hash=tax.content_hash,
                            params={"fine_tune": 1, "fine_tune_weight": 0.6, "cv_folds": 2},
                            progress=said.append)
    members = {name: weight for name, _estimator, weight in model.pipeline.members}
    assert members == pytest.approx({"tfidf": 0.4, "fine_tuned": 0.6})
    assert any("fine-tuned for 1 epochs" in line for line in said)
    assert sum("fine-tuning epoch 1/1" in line for line in said) == 3  # two folds, then all rows
    model.save(tmp_path / "m.joblib")
    loaded = model_mod.load(tmp_path / "m.joblib")
    probe = ["the flight is cancelled", "my bag is missing", "great crew"]
    assert loaded.predict(probe) == model.predict(probe)
    # The blend is the weighted mean of its members.
    tfidf, tuned = (estimator for _name, estimator, _weight in model.pipeline.members)
    own = model_mod._topic_columns(model.pipeline.classes_,
                                   0.4 * tfidf.predict_proba(probe) + 0.6 * tuned.predict_proba(probe),
                                   model.meta.topics)
    got = np.array([[row[t] for t in model.meta.topics] for row in model.predict(probe)])
    np.testing.assert_allclose(got, own, rtol=1e-6)
    # The worker's path: the tagger loads the file and scores with the whole blend.
    tagger = Tagger.load(AIRLINE, tmp_path / "m.joblib", enrich=False)
    compared = 0
    for result, row in zip(tagger.tag_many(probe), got, strict=True):
        for topic, p in zip(model.meta.topics, row, strict=True):
            if topic in result.scores and result.scores[topic] < 1.0:  # 1.0: a rule matched
                assert result.scores[topic] == pytest.approx(p, abs=5e-5)  # scores keep 4 decimals
                compared += 1
        model_tags = {w.topic for w in result.why if w.tier == "model"}
        assert model_tags == {t for t, p in zip(model.meta.topics, row, strict=True)
                              if p >= model.meta.thresholds[t] and t not in {w.topic for w in result.why
                                                                              if w.tier == "rule"}}
    assert compared


def test_without_pytorch_training_stops_at_once_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    said: list[str] = []
    with pytest.raises(model_mod.ModelError, match=r"PyTorch: pip install 'earful\[finetune\]'"):
        model_mod.train(CANCELLED + OTHER, [frozenset({"cancelled_flight"})] * 5 + [frozenset()] * 5,
                        ["cancelled_flight"], params={"fine_tune": 1, "embedding": "minilm"},
                        progress=said.append)
    assert said == []  # before encoding or cross-validating anything


def test_fine_tuning_refuses_labels_that_do_not_exclude_each_other() -> None:
    labels = [frozenset({"cancelled_flight", "lost_luggage"})] + [frozenset({"lost_luggage"})] * 4
    with pytest.raises(model_mod.ModelError, match="labels that exclude each other"):
        model_mod.train(LUGGAGE, labels, ["cancelled_flight", "lost_luggage"], params={"fine_tune": 1})


def test_threads_tagging_at_once_share_one_numpy_encoder(fitted: finetune.FineTunedClassifier) -> None:
    from concurrent.futures import ThreadPoolExecutor

    back = pickle.loads(pickle.dumps(fitted))  # no encoder built yet
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: back.encoder(), range(8)))
    assert all(enc is built[0] for enc in built)

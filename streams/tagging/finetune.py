"""The sentence encoder fine-tuned on labelled posts: a member of the learned tier's blend.

The frozen encoder (:mod:`streams.tagging.encoder`) places posts by what they mean in
general, and a linear model on its vectors can only cut that space as it is. Fine-tuning
moves all six layers, and a classification head on the pooled vector, towards this
taxonomy's own distinctions ("the crew was rude" against "the agent on the phone was
rude"), starting from the published all-MiniLM-L6-v2 weights.

Training needs PyTorch (``pip install 'earful[finetune]'``); only ``earful train
--fine-tune`` does. The result is the same network with other weights, so it runs in
numpy through :class:`streams.tagging.encoder.MiniLM`, and the worker needs no PyTorch.
Its weights (float16, about 42 MB compressed) and tokenizer travel inside the model file.

The recipe takes common defaults for fine-tuning a BERT-sized encoder and was not tuned
on any held-out posts: AdamW (weight decay 0.01 on every weight), a learning rate of 5e-5
for the encoder and 2e-3 for the new head, warm-up over the first 6% of steps then a linear
decay, 3 epochs of batches of 32, dropout 0.1 after each layer's attention and feed-forward
output and before the head (none on the attention weights), and class weights of
sqrt(largest class / class) so rare reasons are heard without being shouted.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streams.tagging import encoder
from streams.tagging.encoder import _EPS, _HEADS, _HIDDEN, _LAYERS

INSTALL_HINT = "pip install 'earful[finetune]' (PyTorch)"
# The worker tags from several threads: one of them builds a model's numpy encoder, once.
_BUILDING = threading.Lock()


class FineTuneError(RuntimeError):
    """Fine-tuning cannot run here (no PyTorch, or no base weights)."""


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise FineTuneError(f"fine-tuning the sentence encoder needs PyTorch: {INSTALL_HINT}") from exc
    return torch


def check() -> Path:
    """The published weights' folder, or FineTuneError now if fine-tuning could not run
    (before minutes of other work)."""
    _torch()
    try:
        return encoder._model_dir()
    except encoder.EncoderError as exc:
        raise FineTuneError(str(exc)) from exc


def _forward(torch: Any, w: dict[str, Any], ids: Any, mask: Any, dropout: float) -> Any:
    """The pooled, unit-length sentence vector: encoder.MiniLM._forward, in PyTorch."""
    f = torch.nn.functional
    batch, length = ids.shape
    head = _HIDDEN // _HEADS
    x = (f.embedding(ids, w["embeddings.word_embeddings.weight"])
         + w["embeddings.position_embeddings.weight"][:length][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = f.layer_norm(x, (_HIDDEN,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], _EPS)
    blocked = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
    for i in range(_LAYERS):
        p = f"encoder.layer.{i}."

        def dense(t: Any, name: str, p: str = p) -> Any:
            return f.linear(t, w[p + name + ".weight"], w[p + name + ".bias"])

        q = dense(x, "attention.self.query").view(batch, length, _HEADS, head).transpose(1, 2)
        k = dense(x, "attention.self.key").view(batch, length, _HEADS, head).transpose(1, 2)
        v = dense(x, "attention.self.value").view(batch, length, _HEADS, head).transpose(1, 2)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(head) + blocked).softmax(-1)
        ctx = (attn @ v).transpose(1, 2).reshape(batch, length, _HIDDEN)
        out = f.dropout(dense(ctx, "attention.output.dense"), dropout, dropout > 0)
        x = f.layer_norm(out + x, (_HIDDEN,), w[p + "attention.output.LayerNorm.weight"],
                         w[p + "attention.output.LayerNorm.bias"], _EPS)
        out = f.dropout(dense(f.gelu(dense(x, "intermediate.dense")), "output.dense"), dropout, dropout > 0)
        x = f.layer_norm(out + x, (_HIDDEN,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], _EPS)
    m = mask[..., None]
    pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


class FineTunedClassifier:
    """Texts -> class probabilities, from the encoder fine-tuned with a classification head.

    A scikit-learn style estimator (``fit``, ``predict_proba``, ``classes_``), so it is one
    member of a :class:`streams.tagging.model.Blend`. ``progress`` reports each epoch; it
    is not pickled, nor is the numpy encoder built from the weights on first use.
    """

    def __init__(self, epochs: int = 3, learning_rate: float = 5e-5, head_learning_rate: float = 2e-3,
                 batch_size: int = 32, dropout: float = 0.1, scale: float = 20.0, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.head_learning_rate = head_learning_rate
        self.batch_size = batch_size
        self.dropout = dropout
        self.scale = scale  # the head reads unit vectors: logits = scale * (W v + b)
        self.seed = seed
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("progress", "_encoder")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.progress = None

    def fit(self, texts: Sequence[str], y: Sequence[Any]) -> FineTunedClassifier:
        torch = _torch()
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        base = check()
        texts = list(texts)
        self.classes_, target = np.unique(np.asarray(y), return_inverse=True)
        counts = np.bincount(target, minlength=len(self.classes_)).astype(float)
        class_weight = np.sqrt(counts.max() / np.maximum(counts, 1.0))
        class_weight /= class_weight.mean()

        tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=encoder.MAX_TOKENS)
        tokenizer.no_padding()
        torch.manual_seed(self.seed)
        w = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True)
             for k, v in load_file(str(base / "model.safetensors")).items()
             if k != "embeddings.position_ids" and not k.startswith("pooler.")}
        head = torch.nn.Linear(_HIDDEN, len(self.classes_))
        optimiser = torch.optim.AdamW(
            [{"params": list(w.values()), "lr": self.learning_rate},
             {"params": list(head.parameters()), "lr": self.head_learning_rate}],
            weight_decay=0.01,
        )
        steps = max(1, self.epochs * math.ceil(len(texts) / self.batch_size))
        warmup = max(1.0, 0.06 * steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps))
        loss_of = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weight, dtype=torch.float32))
        rng = np.random.default_rng(self.seed)
        started = time.monotonic()
        for epoch in range(self.epochs):
            order, total = rng.permutation(len(texts)), 0.0
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                ids, mask = encoder.token_batch(tokenizer, [texts[i] for i in rows])
                pooled = _forward(torch, w, torch.from_numpy(ids), torch.from_numpy(mask), self.dropout)
                logits = head(torch.nn.functional.dropout(pooled, self.dropout, True)) * self.scale
                loss = loss_of(logits, torch.from_numpy(target[rows]))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * len(rows)
            if self.progress:
                self.progress(f"  fine-tuning epoch {epoch + 1}/{self.epochs}: loss {total / len(texts):.3f} "
                              f"({time.monotonic() - started:.0f} s)")

        self.weights_ = {k: v.detach().numpy().astype(np.float16) for k, v in w.items()}
        self.head_weight_ = head.weight.detach().numpy().astype(np.float32)
        self.head_bias_ = head.bias.detach().numpy().astype(np.float32)
        self.tokenizer_ = tokenizer.to_str()
        digest = hashlib.sha256()
        for key in sorted(self.weights_):
            digest.update(key.encode() + self.weights_[key].tobytes())
        digest.update(self.head_weight_.tobytes() + self.head_bias_.tobytes())
        self.fingerprint_ = f"all-MiniLM-L6-v2 fine-tuned@{digest.hexdigest()[:12]}"
        self.__dict__.pop("_encoder", None)
        return self

    def encoder(self) -> encoder.MiniLM:
        """The fine-tuned encoder in numpy (built once per process, with its own cache)."""
        enc = self.__dict__.get("_encoder")
        if enc is not None:
            return enc
        with _BUILDING:
            enc = self.__dict__.get("_encoder")
            if enc is None:
                from tokenizers import Tokenizer

                enc = encoder.MiniLM(self.weights_, Tokenizer.from_str(self.tokenizer_), self.fingerprint_)
                self.__dict__["_encoder"] = enc
        return enc

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.encoder().encode(list(texts))
        return _softmax(self.scale * (vectors @ self.head_weight_.T + self.head_bias_))

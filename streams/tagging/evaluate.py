"""Precision, recall and F1 per topic, each topic scored as a binary tag over all rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TopicScore:
    topic: str
    tp: int
    fp: int
    fn: int

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 0.0


def score(
    predicted: Sequence[Iterable[str]], gold: Sequence[Iterable[str]], topics: Sequence[str]
) -> list[TopicScore]:
    counts = {t: [0, 0, 0] for t in topics}
    for pred, true in zip(predicted, gold, strict=True):
        p, g = set(pred), set(true)
        for t, c in counts.items():
            if t in p and t in g:
                c[0] += 1
            elif t in p:
                c[1] += 1
            elif t in g:
                c[2] += 1
    return [TopicScore(t, *counts[t]) for t in topics]


def macro_f1(scores: Sequence[TopicScore]) -> float:
    return sum(s.f1 for s in scores) / len(scores) if scores else 0.0


def format_table(scores: Sequence[TopicScore], rows: int) -> str:
    width = max([len("topic"), *(len(s.topic) for s in scores)])
    lines = [f"{'topic':<{width}}  precision  recall     f1  support   tp   fp   fn"]
    for s in scores:
        lines.append(
            f"{s.topic:<{width}}  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:5.3f}  {s.support:7d}"
            f" {s.tp:4d} {s.fp:4d} {s.fn:4d}"
        )
    lines.append(f"{'macro-F1':<{width}}  {'':9}  {'':6}  {macro_f1(scores):5.3f}  rows={rows}")
    return "\n".join(lines)

"""Text normalisation for matching: one form for phrases, patterns and the model.

What a post looks like and what the taxonomy author wrote rarely agree on case,
accents, punctuation, hashtags or links, so both go through :func:`normalize`:

- case folded, diacritics stripped (``Ré`` -> ``re``), curly apostrophes made straight;
- links removed (a URL's path is not chatter, and ``/refund`` in a link is no complaint);
- punctuation, ``@`` and ``_`` become separators, runs of separators one space;
- each emoji or other symbol is a token of its own, so ``down😡`` still ends in ``down``;
- a hashtag's camelCase humps are soft word boundaries, so ``#myGovDown`` can match the
  phrase ``mygov down`` (phrases are also matched in their compact, space-free form).

Every normalised character keeps the offset of the original character it came from, so a
match is reported as a span of the text the user actually posted.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_HASHTAG = re.compile(r"#(\w+)")
# A word (letters/digits, inner apostrophes kept so "can't" stays one token) or one symbol.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")
# Humps inside a hashtag: aB, a1, 1a, and ABc (an acronym followed by a word: ATORefund).
_HUMP = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])|(?<=[A-Z])(?=[A-Z][a-z])")
# Scripts written without spaces between words: no word boundary is required next to them.
_NOSPACE = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")

_SEPARATORS = set("!\"$%&()*+,-./:;<=>?@[\\]^_`{|}~#\u00a0\u2026\u2013\u2014\u201c\u201d\u00ab\u00bb")


class _FoldTable(dict[int, str]):
    """``str.translate`` table built lazily: one output character per input character.

    Keeping the length lets the translated text share offsets with the original, and
    ``translate`` runs the cached characters in C.
    """

    def __missing__(self, codepoint: int) -> str:
        char = chr(codepoint)
        out = _fold_char(char)
        self[codepoint] = out
        return out


def _fold_char(char: str) -> str:
    if char in _SEPARATORS or char in "\u200d\ufe0f\ufe0e":
        return " "
    if char in "\u2018\u2019\u02bc`\u00b4":
        return "'"
    if char.isspace():
        return " "
    base = unicodedata.normalize("NFKD", char)
    base = "".join(c for c in base if not unicodedata.combining(c)) or char
    folded = base.casefold()
    if len(folded) == 1:
        return folded
    # A character that folds to several (ß -> ss, ﬁ -> fi) keeps one, so offsets hold.
    lowered = char.lower()
    return lowered if len(lowered) == 1 else char


_FOLD = _FoldTable()


def fold(text: str) -> str:
    """Case, accents and punctuation folded, length kept (used for taxonomy phrases too)."""
    return text.translate(_FOLD)


@dataclass(frozen=True, slots=True)
class Normalized:
    """A text in matching form, with the way back to the original offsets."""

    text: str  # tokens joined by single spaces
    norm_starts: tuple[int, ...]  # where each token starts in ``text``
    orig_starts: tuple[int, ...]  # where the same token starts in the original
    soft: frozenset[int]  # extra word boundaries (hashtag humps), as offsets in ``text``

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a span of ``text`` back to the original text."""
        return self._orig(start), self._orig(end - 1) + 1 if end > start else self._orig(start)

    def _orig(self, pos: int) -> int:
        i = bisect_right(self.norm_starts, pos) - 1
        if i < 0:
            return 0
        return self.orig_starts[i] + (pos - self.norm_starts[i])

    def is_boundary(self, pos: int) -> bool:
        text = self.text
        if pos <= 0 or pos >= len(text):
            return True
        if text[pos - 1] == " " or text[pos] == " " or pos in self.soft:
            return True
        # Between a word character and a symbol token is a boundary too ("down😡").
        return text[pos - 1].isalnum() != text[pos].isalnum()

    def for_model(self) -> str:
        """The text with hashtag humps opened up: ``mygovdown`` -> ``my gov down``."""
        if not self.soft:
            return self.text
        parts, last = [], 0
        for cut in sorted(self.soft):
            parts.append(self.text[last:cut])
            last = cut
        parts.append(self.text[last:])
        return " ".join(parts)

    def model_to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a span of :meth:`for_model` (one word, no opened hump inside) to the original."""
        # The i-th opened hump (sorted) put a space at model offset cut + i.
        opened = [cut + i for i, cut in enumerate(sorted(self.soft))]
        shift = bisect_right(opened, start)
        return self.to_original(start - shift, end - shift)


def _blank(match: re.Match[str]) -> str:
    return " " * len(match.group(0))


def normalize(text: str) -> Normalized:
    if "http" in text or "www." in text or "HTTP" in text:
        text_nourl = _URL.sub(_blank, text)
    else:
        text_nourl = text
    humps: list[int] = []
    if "#" in text_nourl:
        for tag in _HASHTAG.finditer(text_nourl):
            base = tag.start(1)
            humps.extend(base + m.start() for m in _HUMP.finditer(tag.group(1)))
    folded = text_nourl.translate(_FOLD)
    tokens: list[str] = []
    norm_starts: list[int] = []
    orig_starts: list[int] = []
    pos = 0
    for m in _TOKEN.finditer(folded):
        tok = m.group(0)
        tokens.append(tok)
        norm_starts.append(pos)
        orig_starts.append(m.start())
        pos += len(tok) + 1
    soft: set[int] = set()
    if humps:
        ti = 0
        for h in sorted(humps):
            while ti + 1 < len(orig_starts) and orig_starts[ti + 1] <= h:
                ti += 1
            if tokens and orig_starts[ti] < h < orig_starts[ti] + len(tokens[ti]):
                soft.add(norm_starts[ti] + h - orig_starts[ti])
    return Normalized(" ".join(tokens), tuple(norm_starts), tuple(orig_starts), frozenset(soft))


def normalize_phrase(phrase: str) -> str:
    """A taxonomy phrase in the same form as a normalised post."""
    return " ".join(_TOKEN.findall(fold(phrase)))


def needs_boundary(char: str) -> bool:
    """Whether a phrase edge at this character must sit on a word boundary."""
    return not _NOSPACE.match(char)

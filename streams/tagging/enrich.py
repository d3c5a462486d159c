"""Language and sentiment of a mention, with offline libraries.

- Language: Google's CLD2 (pycld2, C++; ~7 µs for a tweet), and py3langid (langid.py's
  model; ~150 µs) for the posts CLD2 is not sure about (well under 1% of real tweets; on
  the others the two agree 99.4% of the time). py3langid alone cost more than tagging,
  validation and indexing together; lingua-language-detector is slower still.
- Sentiment: VADER (vaderSentiment), a lexicon-and-rules scorer built for social media
  (emoji, caps, "!!!"); its compound score is already in -1..1. It only knows English, so
  posts known to be in another language get no sentiment rather than a made-up 0.

Both are loaded lazily and once per process: a worker that turns enrichment off never
pays for them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pycld2

# The languages a mention is most likely in for an Australian agency; restricting the
# identifier to a set also makes it cheaper. ``None`` keeps all of langid's 97.
DEFAULT_LANGUAGES: tuple[str, ...] | None = None
_MIN_CHARS = 3
# CLD2 still uses some withdrawn ISO 639-1 codes.
_CLD2_CODES = {"iw": "he", "jw": "jv", "in": "id", "mo": "ro"}


@lru_cache(maxsize=4)
def _identifier(languages: tuple[str, ...] | None) -> Any:
    from py3langid.langid import _load_identifier

    return _load_identifier(langs=list(languages) if languages else None)


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def detect_language(text: str, languages: tuple[str, ...] | None = DEFAULT_LANGUAGES) -> str | None:
    """ISO 639-1 code of the text's language, or None when there is too little to tell."""
    if len(text) < 64 and sum(c.isalpha() for c in text) < _MIN_CHARS:
        return None
    if languages is None:
        try:
            reliable, _, details = pycld2.detect(text)
        except pycld2.error:  # text CLD2 cannot read (e.g. lone surrogates): ask langid
            reliable = False
        if reliable and details[0][1] != "un":
            code = details[0][1].split("-")[0]
            return _CLD2_CODES.get(code, code)
    lang, _score = _identifier(languages).classify(text)
    return str(lang)


def sentiment(text: str, lang: str | None = None) -> float | None:
    """VADER compound score in -1..1; None for a post in a language VADER does not read."""
    if lang is not None and lang != "en":
        return None
    return float(_analyzer().polarity_scores(text)["compound"])



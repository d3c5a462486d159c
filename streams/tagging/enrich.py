"""Language and sentiment of a mention, with offline libraries.

- Language: py3langid (langid.py's model, numpy-vectorised; ~100 µs for a tweet).
  lingua-language-detector is more accurate on very short posts but several times
  slower; at thousands of mentions per second per worker that cost decides it.
- Sentiment: VADER (vaderSentiment), a lexicon-and-rules scorer built for social media
  (emoji, caps, "!!!"); its compound score is already in -1..1. It only knows English, so
  posts known to be in another language get no sentiment rather than a made-up 0.

Both are loaded lazily and once per process: a worker that turns enrichment off never
pays for them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# The languages a mention is most likely in for an Australian agency; restricting the
# identifier to a set also makes it cheaper. ``None`` keeps all of langid's 97.
DEFAULT_LANGUAGES: tuple[str, ...] | None = None
_MIN_CHARS = 3


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
    if sum(c.isalpha() for c in text[:64]) < _MIN_CHARS:
        return None
    lang, _score = _identifier(languages).classify(text)
    return str(lang)


def sentiment(text: str, lang: str | None = None) -> float | None:
    """VADER compound score in -1..1; None for a post in a language VADER does not read."""
    if lang is not None and lang != "en":
        return None
    return float(_analyzer().polarity_scores(text)["compound"])



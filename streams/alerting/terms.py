"""Top terms of a spike: the words citizens use more during it than usual.

Explainable on purpose: a term's score is how many spike mentions use it times the log of how
much more often it appears in the spike than in the background (add-one smoothed). No model,
so a subscriber can check a term by searching for it in Kibana.

Counts are per mention (a term counts once per text), so one long rant cannot fill the list.
Build the background with ``term_counts`` so both sides are counted the same way.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["STOPWORDS", "term_counts", "tokens", "top_terms"]

_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_HANDLE = re.compile(r"(?<!\w)@[\w.@-]+")
_WORD = re.compile(r"[a-z0-9][a-z0-9'’-]*[a-z0-9]|[a-z]", re.IGNORECASE)

# "down", "out", "off" and "up" stay: "portal down", "locked out" are what an outage sounds like.
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't during each few for from further get gets got had hadn't has hasn't
    have haven't having he her here hers herself him himself his how i i'm i've if in into is
    isn't it it's its itself just let's like me more most much my myself no nor not now of
    on once one only or other our ours ourselves over own really same she should shouldn't
    so some still such than that that's the their theirs them themselves then there there's
    these they they're this those through to too under until us very was wasn't we we're
    were weren't what what's when where which while who whom why will with won't would
    wouldn't you you're your yours yourself yourselves amp rt via im dont cant ive
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def tokens(text: str) -> list[str]:
    """Lower-cased words of a mention, without links, handles, numbers-only and stopwords."""
    text = _HANDLE.sub(" ", _URL.sub(" ", text)).replace("’", "'")
    out = []
    for word in _WORD.findall(text.lower()):
        word = word.strip("'-")
        if len(word) < 3 or word.isdigit() or word in STOPWORDS:
            continue
        out.append(word)
    return out


def term_counts(texts: Iterable[str]) -> Counter[str]:
    """In how many texts each term appears."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(tokens(text)))
    return counts


def top_terms(texts: list[str], background: Counter[str] | None, k: int = 8) -> list[str]:
    """Up to ``k`` terms over-represented in ``texts`` against ``background``, best first.

    Without a background the most common terms are returned. A term must appear in at least two
    spike mentions once there are five or more, so a single post's vocabulary is not "the trend".
    """
    spike = term_counts(texts)
    if not spike:
        return []
    min_count = 2 if len(texts) >= 5 else 1
    candidates = {t: c for t, c in spike.items() if c >= min_count}
    if not background:
        ranked = sorted(candidates.items(), key=lambda tc: (-tc[1], tc[0]))
        return [t for t, _ in ranked[:k]]
    spike_total = sum(spike.values())
    bg_total = sum(background.values())
    vocabulary = len(set(spike) | set(background))
    scores: dict[str, float] = {}
    for term, count in candidates.items():
        p_spike = count / spike_total
        p_background = (background.get(term, 0) + 1) / (bg_total + vocabulary)
        lift = p_spike / p_background
        if lift > 1.0:
            scores[term] = count * math.log(lift)
    ranked_terms = sorted(scores, key=lambda t: (-scores[t], -candidates[t], t))
    return ranked_terms[:k]

"""The taxonomy compiled into one multi-pattern matcher.

Every phrase of every topic (tag phrases, exclusions, lexicon entries of ``all`` rules,
per-language terms) goes into one Aho-Corasick automaton (pyahocorasick), so a post is
scanned once whatever the size of the taxonomy. Phrases are matched on the normalised
text (see :mod:`streams.tagging.normalize`) and must sit on word boundaries, except next
to characters of scripts written without spaces. Multi-word phrases are also entered
space-free, which is how ``#myGovDown`` meets ``mygov down``.

Regex patterns are joined into one alternation for a single screening pass; only a post
that passes it is searched pattern by pattern, so overlapping patterns are all found.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import product
from typing import Literal

import ahocorasick

from schemas.records import TagReason
from streams.tagging.normalize import Normalized, needs_boundary, normalize, normalize_phrase
from streams.tagging.taxonomy import Taxonomy

Kind = Literal["phrase", "exclude", "lex", "term"]


@dataclass(frozen=True, slots=True)
class _Entry:
    kind: Kind
    target: str  # topic id, or lexicon name for "lex"
    rule: str
    prefix: bool
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class _Pattern:
    topic: str
    rule: str
    regex: re.Pattern[str]
    exclude: bool


@dataclass(frozen=True, slots=True)
class _AllRule:
    topic: str
    rule: str
    groups: tuple[str, ...]  # lexicon names
    near: int | None


@dataclass
class RuleMatch:
    """What the rules say about one post: reasons per topic, and the vetoed topics."""

    reasons: dict[str, list[TagReason]] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)
    normalized: Normalized | None = None


def primary_lang(lang: str | None) -> str | None:
    if not lang:
        return None
    return lang.replace("_", "-").split("-", 1)[0].lower()


class Matcher:
    """Compiled form of a taxonomy. Build once; :meth:`match` is a pure function of the text."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        keys: dict[str, list[_Entry]] = defaultdict(list)
        patterns: list[_Pattern] = []
        all_rules: list[_AllRule] = []

        def add(phrase: str, entry: _Entry) -> None:
            prefix = phrase.endswith("*")
            norm = normalize_phrase(phrase.rstrip("*"))
            if not norm:
                return
            e = _Entry(entry.kind, entry.target, entry.rule, prefix, entry.lang)
            keys[norm].append(e)
            compact = norm.replace(" ", "")
            if compact != norm:
                keys[compact].append(e)

        for name, phrases in taxonomy.lexicons.items():
            for p in phrases:
                add(p, _Entry("lex", name, name, False))
        for tid, topic in taxonomy.topics.items():
            for p in topic.phrases:
                add(p, _Entry("phrase", tid, f"{tid}.phrase", False))
            for p in topic.exclude:
                add(p, _Entry("exclude", tid, f"{tid}.exclude", False))
            for lang, terms in topic.terms.items():
                for p in terms:
                    add(p, _Entry("term", tid, f"{tid}.terms.{lang}", False, primary_lang(lang)))
            for name, pattern in topic.named_patterns().items():
                patterns.append(_Pattern(tid, f"{tid}.pattern.{name}", re.compile(pattern), False))
            for i, pattern in enumerate(topic.exclude_patterns):
                patterns.append(_Pattern(tid, f"{tid}.exclude.{i}", re.compile(pattern), True))
            for rule in topic.all:
                names = []
                for gi, group in enumerate(rule.groups):
                    if isinstance(group, str):
                        names.append(group)
                        continue
                    anon = f"{tid}.{rule.id}#{gi}"
                    for p in group:
                        add(p, _Entry("lex", anon, anon, False))
                    names.append(anon)
                all_rules.append(_AllRule(tid, f"{tid}.all.{rule.id}", tuple(names), rule.near))

        self._automaton = ahocorasick.Automaton()
        for key, entries in keys.items():
            self._automaton.add_word(key, (key, tuple(dict.fromkeys(entries))))
        if keys:
            self._automaton.make_automaton()
        self._has_keys = bool(keys)
        self._patterns = tuple(patterns)
        self._screen = (
            re.compile("|".join(f"(?:{p.regex.pattern})" for p in patterns)) if patterns else None
        )
        self._all_rules = tuple(all_rules)

    def match(self, text: str, lang: str | None = None) -> RuleMatch:
        n = normalize(text)
        lang = primary_lang(lang)
        out = RuleMatch(normalized=n)
        lex: dict[str, list[tuple[int, int]]] = defaultdict(list)
        hits: list[tuple[str, str, int, int]] = []  # topic, rule, norm start, norm end
        if self._has_keys and n.text:
            for end_idx, (key, entries) in self._automaton.iter(n.text):
                start, end = end_idx - len(key) + 1, end_idx + 1
                left = not needs_boundary(key[0]) or n.is_boundary(start)
                if not left:
                    continue
                right = not needs_boundary(key[-1]) or n.is_boundary(end)
                for e in entries:
                    if not (right or e.prefix):
                        continue
                    if e.kind == "exclude":
                        out.excluded.add(e.target)
                    elif e.kind == "lex":
                        lex[e.target].append((start, end))
                    elif e.kind == "phrase" or lang is None or e.lang == lang:
                        hits.append((e.target, e.rule, start, end))
        if self._screen is not None and self._screen.search(n.text):
            for p in self._patterns:
                for m in p.regex.finditer(n.text):
                    if m.end() == m.start():
                        continue
                    if p.exclude:
                        out.excluded.add(p.topic)
                        break
                    hits.append((p.topic, p.rule, m.start(), m.end()))
        for rule in self._all_rules:
            span = _cooccur([lex.get(g, ()) for g in rule.groups], rule.near)
            if span is not None:
                hits.append((rule.topic, rule.rule, span[0], span[1]))
        for topic, rule, s, e in hits:
            if topic in out.excluded:
                continue
            os_, oe = n.to_original(s, e)
            out.reasons.setdefault(topic, []).append(
                TagReason(topic=topic, rule=rule, tier="rule", span=(os_, oe), matched=text[os_:oe])
            )
        return out


def _cooccur(groups: list[list[tuple[int, int]] | tuple[()]], near: int | None) -> tuple[int, int] | None:
    """The tightest span holding one hit from every group (within ``near`` chars if set)."""
    if not all(groups):
        return None
    best: tuple[int, int] | None = None
    # Hit lists are short (a post mentions "mygov" a few times at most); cap the product anyway.
    capped = [g[:8] for g in groups]
    for combo in product(*capped):
        s = min(c[0] for c in combo)
        e = max(c[1] for c in combo)
        if near is not None and e - s > near:
            continue
        if best is None or e - s < best[1] - best[0]:
            best = (s, e)
    return best

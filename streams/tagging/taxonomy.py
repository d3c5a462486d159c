"""The taxonomy file: topics, their rules, and how it is read and checked.

A taxonomy is YAML (see ``deploy/taxonomies/tax-agency.yaml``)::

    name: tax-agency
    lexicons:                  # named phrase lists that ``all`` rules refer to
      agency: [ato, mygov, tax office]
    topics:
      outage:
        label: Outage
        parent: online_services    # a tag on a child also tags its parent
        phrases: [mygov down]      # word-bounded, matched after normalisation
        patterns: {down_for_me: "..."}   # regexes on the normalised text (or a list)
        all:                       # co-occurrence: one phrase from each group
          - {id: agency_down, groups: [agency, [down, not working]], near: 60}
        exclude: [power is down]   # any hit vetoes the topic for this post
        exclude_patterns: []
        terms: {zh: [网站崩溃]}     # extra phrases used for posts in that language
        threshold: 0.5             # the model tags at or above this probability

A phrase ending in ``*`` matches as a prefix (``cancel*``). Topic ids are snake_case.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TOPIC_ID = re.compile(r"^[a-z][a-z0-9_]*$")


class TaxonomyError(ValueError):
    """The taxonomy file cannot be read or does not make sense."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


class AllRule(_Strict):
    id: str
    groups: list[str | list[str]] = Field(min_length=2)
    near: int | None = Field(default=None, gt=0, description="max characters between the hits")


class Topic(_Strict):
    label: str | None = None
    description: str | None = None
    parent: str | None = None
    phrases: list[str] = Field(default_factory=list)
    patterns: dict[str, str] | list[str] = Field(default_factory=dict)
    all: list[AllRule] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    exclude_patterns: list[str] = Field(default_factory=list)
    terms: dict[str, list[str]] = Field(default_factory=dict)
    threshold: float | None = Field(default=None, ge=0, le=1)

    def named_patterns(self) -> dict[str, str]:
        if isinstance(self.patterns, dict):
            return dict(self.patterns)
        return {str(i): p for i, p in enumerate(self.patterns)}


class Taxonomy(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    lexicons: dict[str, list[str]] = Field(default_factory=dict)
    topics: dict[str, Topic]
    # Content hash of the file it was read from; set by load().
    content_hash: str = ""

    @field_validator("topics")
    @classmethod
    def _ids(cls, topics: dict[str, Topic]) -> dict[str, Topic]:
        for tid in topics:
            if not _TOPIC_ID.match(tid):
                raise ValueError(f"topic id {tid!r} is not snake_case")
        return topics

    @model_validator(mode="after")
    def _references(self) -> Taxonomy:
        for tid, topic in self.topics.items():
            if topic.parent is not None and topic.parent not in self.topics:
                raise ValueError(f"topic {tid}: parent {topic.parent!r} is not a topic")
            for rule in topic.all:
                for group in rule.groups:
                    if isinstance(group, str) and group not in self.lexicons:
                        raise ValueError(f"topic {tid}, rule {rule.id}: no lexicon {group!r}")
            for name, pattern in topic.named_patterns().items():
                _check_regex(f"topic {tid}, pattern {name}", pattern)
            for pattern in topic.exclude_patterns:
                _check_regex(f"topic {tid}, exclude pattern", pattern)
        for tid in self.topics:
            self.ancestors(tid)  # raises on a cycle
        return self

    def ancestors(self, tid: str) -> list[str]:
        seen: list[str] = []
        parent = self.topics[tid].parent
        while parent is not None:
            if parent in seen or parent == tid:
                raise ValueError(f"topic {tid}: parent cycle through {parent!r}")
            seen.append(parent)
            parent = self.topics[parent].parent
        return seen

    @property
    def version(self) -> str:
        return f"{self.name}@{self.content_hash[:8]}"


def _check_regex(where: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: bad regex {pattern!r}: {exc}") from exc


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse(data: bytes, source: str = "<taxonomy>") -> Taxonomy:
    try:
        raw: Any = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaxonomyError(f"{source}: expected a mapping at the top level")
    raw["content_hash"] = content_hash(data)
    try:
        return Taxonomy.model_validate(raw)
    except ValueError as exc:
        raise TaxonomyError(f"{source}: {exc}") from exc


def load(path: Path) -> Taxonomy:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TaxonomyError(f"cannot read taxonomy {path}: {exc}") from exc
    return parse(data, str(path))

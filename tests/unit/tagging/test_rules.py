"""Taxonomy files, normalisation, the compiled matcher, precedence and reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.tagging import Tagger
from streams.tagging import taxonomy as taxonomy_mod
from streams.tagging.matcher import Matcher
from streams.tagging.normalize import normalize, normalize_phrase

SMALL = b"""
name: small
lexicons:
  agency: [ato, mygov]
topics:
  online:
    label: Online
  outage:
    parent: online
    phrases: [mygov down, site crash*]
    patterns: {code_503: "\\\\b503\\\\b"}
    all:
      - {id: agency_down, groups: [agency, [down, not working]], near: 30}
    exclude: [power is down]
  refund:
    phrases: [where is my refund]
    exclude_patterns: ["refund scam"]
    terms: {zh: [\xe9\x80\x80\xe7\xa8\x8e]}
"""


def _write(tmp_path: Path, data: bytes, name: str = "tax.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return _write(tmp_path, SMALL)


# --- taxonomy file -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"name: x\ntopics: {Bad-Id: {}}\n", "not snake_case"),
        (b"name: x\ntopics: {a: {parent: b}}\n", "parent 'b' is not a topic"),
        (b"name: x\ntopics: {a: {parent: b}, b: {parent: a}}\n", "parent cycle"),
        (b"name: x\ntopics: {a: {all: [{id: r, groups: [nope, [x]]}]}}\n", "no lexicon 'nope'"),
        (b"name: x\ntopics: {a: {patterns: ['(unclosed']}}\n", "bad regex"),
        (b"name: x\ntopics: {a: {phrasez: [x]}}\n", "phrasez"),
        (b"name: x\ntopics: {a: {threshold: 2}}\n", "threshold"),
        (b"name: x\ntopics: [a, b]\n", "topics"),
        (b"- just a list\n", "mapping at the top level"),
        (b"name: x\ntopics: {a: {phrases: [unclosed\n", "not valid YAML"),
        (b"name: x\ntopics: {a: {exclude: [no, off]}}\n", "valid string"),  # YAML reads these as booleans
    ],
)
def test_a_bad_taxonomy_is_refused_with_the_reason(tmp_path: Path, data: bytes, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(taxonomy_mod.TaxonomyError, match=message) as info:
        taxonomy_mod.load(path)
    assert str(path) in str(info.value)


def test_a_missing_taxonomy_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(taxonomy_mod.TaxonomyError, match="cannot read"):
        taxonomy_mod.load(tmp_path / "nope.yaml")


def test_the_version_follows_the_content(small: Path) -> None:
    a = taxonomy_mod.load(small)
    assert a.version.startswith("small@")
    small.write_bytes(SMALL + b"\n# edited\n")
    assert taxonomy_mod.load(small).version != a.version


@pytest.mark.parametrize("name", ["tax-agency", "airline", "crisis"])
def test_shipped_taxonomies_load(name: str) -> None:
    root = Path(__file__).resolve().parents[3]
    tax = taxonomy_mod.load(root / "deploy" / "taxonomies" / f"{name}.yaml")
    assert tax.name == name
    Matcher(tax)


def test_the_airline_taxonomy_has_the_nine_complaint_reasons() -> None:
    root = Path(__file__).resolve().parents[3]
    tax = taxonomy_mod.load(root / "deploy" / "taxonomies" / "airline.yaml")
    assert set(tax.topics) == {
        "late_flight", "cancelled_flight", "lost_luggage", "damaged_luggage", "flight_booking_problems",
        "customer_service_issue", "flight_attendant_complaints", "bad_flight", "longlines",
    }


# --- normalisation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MyGov DOWN", "mygov down"),
        ("Réfund délayed", "refund delayed"),
        ("mygov down😡😡", "mygov down 😡 😡"),
        ("mygov…down!!!", "mygov down"),
        ("see https://ato.gov.au/refund-delayed now", "see now"),
        ("can’t log in", "can't log in"),
        ("@ato_gov help", "ato gov help"),
        ("#MyGovDown", "mygovdown"),
    ],
)
def test_normalised_text(text: str, expected: str) -> None:
    assert normalize(text).text == expected


def test_hashtag_humps_open_up_for_the_model() -> None:
    assert normalize("#ATORefundDelay again").for_model() == "ato refund delay again"


def test_phrases_and_posts_share_one_form() -> None:
    assert normalize_phrase("Can’t  LOG-in") == normalize("can't log in").text


def test_offsets_map_back_to_the_post() -> None:
    text = "Ugh… https://x.co/a MYGOV Down 😡"
    n = normalize(text)
    start = n.text.index("mygov down")
    s, e = n.to_original(start, start + len("mygov down"))
    assert text[s:e] == "MYGOV Down"


# --- matcher -----------------------------------------------------------------------


def test_every_rule_kind_reports_its_rule_and_the_span_it_matched(small: Path) -> None:
    m = Matcher(taxonomy_mod.load(small))
    cases = {
        "Is MyGov DOWN for anyone?": ("outage.phrase", "MyGov DOWN"),
        "#myGovDown again": ("outage.phrase", "myGovDown"),
        "site crashed twice today": ("outage.phrase", "site crash"),
        "getting a 503 from them": ("outage.pattern.code_503", "503"),
        "the ato website is not working": ("outage.all.agency_down", "ato website is not working"),
    }
    for text, (rule, matched) in cases.items():
        reasons = m.match(text).reasons["outage"]
        assert any(r.rule == rule and r.matched == matched for r in reasons), (text, reasons)
        for r in reasons:
            assert r.span is not None and text[r.span[0]:r.span[1]] == r.matched


def test_a_co_occurrence_holds_within_near_chars_and_names_its_tightest_span(small: Path) -> None:
    m = Matcher(taxonomy_mod.load(small))

    def agency_down(text: str) -> list[str]:
        return [r.matched or "" for r in m.match(text).reasons.get("outage", []) if r.rule == "outage.all.agency_down"]

    at_limit = "ato " + "x" * 21 + " down"  # 30 characters from "ato" to "down": near is 30
    assert agency_down(at_limit) == [at_limit]
    assert agency_down("ato " + "x" * 22 + " down") == []  # 31: too far apart
    # Two agency words: the reason names the pair closest together.
    assert agency_down("the ato says mygov is not working") == ["mygov is not working"]


def test_phrases_sit_on_word_boundaries(small: Path) -> None:
    m = Matcher(taxonomy_mod.load(small))
    assert "outage" not in m.match("mygov downloads are slow").reasons
    assert "outage" in m.match("mygov down😡").reasons


def test_co_occurrence_needs_both_groups_close_together(small: Path) -> None:
    m = Matcher(taxonomy_mod.load(small))
    assert "outage" not in m.match("the ato sent me a letter").reasons
    far = "the ato sent me a letter about something else entirely, and later my car broke down"
    assert "outage" not in m.match(far).reasons


def test_an_exclusion_vetoes_the_topic(small: Path) -> None:
    m = Matcher(taxonomy_mod.load(small))
    match = m.match("power is down, so mygov down for me too")
    assert "outage" in match.excluded and "outage" not in match.reasons
    assert "refund" in m.match("where is my refund scam warning").excluded


def test_language_terms_apply_to_their_language_or_unknown(small: Path) -> None:
    m = Matcher(taxonomy_mod.load(small))
    assert "refund" in m.match("我的退税呢", "zh-Hans").reasons
    assert "refund" in m.match("我的退税呢").reasons
    assert "refund" not in m.match("我的退税呢", "ja").reasons


# --- tagger: precedence and reload ---------------------------------------------------


def test_an_excluded_child_does_not_tag_its_parent(small: Path) -> None:
    tagger = Tagger.load(small, enrich=False)
    assert tagger.tag("power is down, mygov down too").tags == []
    result = tagger.tag("mygov down")
    assert result.tags == ["online", "outage"]
    assert result.scores == {"online": 1.0, "outage": 1.0}


def test_an_edited_taxonomy_is_picked_up_and_a_broken_one_ignored(small: Path) -> None:
    tagger = Tagger.load(small, enrich=False)
    before = tagger.version
    assert tagger.maybe_reload() is False
    assert "refund" not in tagger.tag("refund delayed again").tags

    small.write_bytes(SMALL.replace(b"[where is my refund]", b"[where is my refund, refund delayed]"))
    os.utime(small, ns=(1, 10**18))  # a new mtime even on coarse clocks
    assert tagger.maybe_reload() is True
    assert tagger.version != before
    assert "refund" in tagger.tag("refund delayed again").tags

    good = tagger.version
    small.write_bytes(b"name: small\ntopics: {Bad: {}}\n")
    os.utime(small, ns=(1, 2 * 10**18))
    assert tagger.maybe_reload() is False
    assert tagger.version == good
    assert "refund" in tagger.tag("refund delayed again").tags

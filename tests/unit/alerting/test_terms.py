from __future__ import annotations

from collections import Counter

from streams.alerting.terms import term_counts, tokens, top_terms

BACKGROUND_TEXTS = [
    "lodged my tax return today with myGov, easy",
    "tax time again, what deductions can I claim",
    "the tax office website has good guides on deductions",
    "anyone know when the tax return is due",
    "my tax agent lodged the return for me",
] * 20

SPIKE_TEXTS = [
    "is the ATO portal down? myGov login keeps failing https://example.com/x",
    "myGov login error again, portal down for anyone else? @ATO",
    "portal down, can't lodge my tax return",
    "login failing on myGov, portal down all morning",
    "ATO portal down again!!!",
    "error 500 on the portal when I try to login",
]


def test_tokens_drop_links_handles_stopwords_and_numbers() -> None:
    assert tokens("Is the @ATO portal DOWN? https://t.co/abc 2024 it's myGov’s") == [
        "portal", "down", "mygov's"
    ]


def test_term_counts_count_once_per_text() -> None:
    assert term_counts(["outage outage outage", "outage"])["outage"] == 2


def test_over_represented_terms_lead_and_background_terms_drop() -> None:
    terms = top_terms(SPIKE_TEXTS, term_counts(BACKGROUND_TEXTS), k=4)
    assert terms[:2] == ["portal", "down"]
    assert "login" in terms
    # "tax" and "return" are everyday vocabulary, not what the spike is about.
    assert "tax" not in terms and "return" not in terms


def test_without_background_most_common_first() -> None:
    assert top_terms(SPIKE_TEXTS, None, k=3) == ["portal", "down", "login"]


def test_single_post_words_need_company_once_there_are_enough_posts() -> None:
    assert "morning" not in top_terms(SPIKE_TEXTS, Counter(), k=20)
    assert top_terms(["refund delayed"], None) == ["delayed", "refund"]


def test_empty() -> None:
    assert top_terms([], None) == []
    assert top_terms(["the and of"], Counter({"x": 1})) == []

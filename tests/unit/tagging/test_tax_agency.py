"""The default tax-agency taxonomy on posts written the way people post."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.tagging import Tagger

ROOT = Path(__file__).resolve().parents[3]
TAXONOMY = ROOT / "deploy" / "taxonomies" / "tax-agency.yaml"


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    return Tagger.load(TAXONOMY, enrich=False)


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("is mygov down again?? been trying all morning 😡", "outage"),
        ("@ato_gov your website keeps timing out when I try to lodge", "outage"),
        ("#myGovDown seriously, 3rd time this week", "outage"),
        ("ATO online services not working for anyone else? #auspol", "outage"),
        ("can't log in to mygov, it keeps asking for a verification code that never comes", "login_identity"),
        ("myGovID app won't let me log in to the ATO business portal", "login_identity"),
        ("when is my BAS due this quarter? the ato site is useless", "due_date_confusion"),
        ("what's the deadline for the tax return if I use an agent?", "due_date_confusion"),
        ("still waiting for my tax refund, lodged 3 weeks ago", "refund_delay"),
        ("where's my refund @ato_gov 😤", "refund_delay"),
        ("got a text saying it's the ATO and I owe money, click the link to pay now. scam?", "scam_phishing"),
        ("PSA: fake ATO calls threatening arrest are going round again", "scam_phishing"),
        ("set up a payment plan with the ato for my tax debt, surprisingly painless", "payments_debt"),
        ("my employer hasn't paid my super for 6 months, who do I report unpaid super to", "superannuation"),
        ("stage 3 tax cuts finally passed, what changes from 1 July?", "legislation_change"),
        ("been on hold with the ATO for 2 hours, absolute joke", "complaint"),
        ("shoutout to the ATO phone lady who sorted out my BAS today, so helpful 🙏", "praise"),
    ],
)
def test_posts_get_their_topic(tagger: Tagger, text: str, topic: str) -> None:
    result = tagger.tag(text)
    assert topic in result.tags, (text, result.tags)
    # Every tag is explained by a rule that matched a span of the post.
    reasons = [w for w in result.why if w.topic == topic]
    assert reasons
    for w in reasons:
        assert w.tier == "rule" and (w.rule.startswith(f"{topic}.") or ".child." in w.rule)
        if w.span is not None:
            assert text[w.span[0]:w.span[1]] == w.matched


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("the power is down at the footy, second half in the dark", "outage"),
        ("netflix is down again, what am I paying for", "outage"),
        ("don't let me down ATO, I need that refund for rego", "outage"),
        ("ato cracking down on work-from-home deductions this year", "outage"),
        ("booked the return flight home, can't wait", "refund_delay"),
        ("super bowl ads were better than the game", "superannuation"),
        ("thanks to the ato I now owe $3k, great", "praise"),
        ("my flight got delayed 3 hours, still waiting at the gate", "refund_delay"),
        ("that scam text pretending to be mygov wanted my login", "login_identity"),
        ("the assignment is due tomorrow and I haven't started", "due_date_confusion"),
    ],
)
def test_posts_that_only_look_like_a_topic_are_not_tagged(tagger: Tagger, text: str, topic: str) -> None:
    assert topic not in tagger.tag(text).tags


def test_a_child_topic_also_tags_its_parent(tagger: Tagger) -> None:
    result = tagger.tag("mygov is down")
    assert {"outage", "online_services"} <= set(result.tags)
    assert any(w.topic == "online_services" and w.rule == "online_services.child.outage" for w in result.why)


def test_a_post_in_another_language_uses_its_terms(tagger: Tagger) -> None:
    assert "refund_delay" in tagger.tag("我的退税还没到，已经一个月了", "zh-CN").tags
    assert "refund_delay" not in tagger.tag("我的退税还没到，已经一个月了", "en").tags


def test_language_and_sentiment_on_every_mention() -> None:
    enriched = Tagger.load(TAXONOMY, enrich=True)
    angry = enriched.tag("mygov is down AGAIN, this is a disgrace and I'm furious")
    assert angry.detected_lang == "en"
    assert angry.sentiment is not None and angry.sentiment < 0
    happy = enriched.tag("thanks ATO, refund arrived in four days, great service")
    assert happy.sentiment is not None and happy.sentiment > 0
    # VADER only reads English: a post known to be in another language gets no score.
    assert enriched.tag("el sitio de impuestos no funciona hoy", "es").sentiment is None

"""How an alert reads in a message: one wording shared by every channel.

A subscriber should see at a glance what happened (topic, observed vs expected, severity),
why (top terms, a few sample mentions with links) and where to look (the Kibana link).
"""

from __future__ import annotations

import html

from schemas.records import Alert

__all__ = ["TEST_CONFIG_VERSION", "digest_title", "html_body", "lines", "sample_lines", "title", "truncate"]

SAMPLE_CHARS = 200


def truncate(text: str, limit: int = SAMPLE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _scope(alert: Alert) -> str:
    return f"'{alert.topic}' on {alert.source}" if alert.source else f"'{alert.topic}'"


def _count(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


#: ``config_version`` of the alerts ``earful alerts test-subscription`` sends
TEST_CONFIG_VERSION = "test"


def title(alert: Alert) -> str:
    """One line: severity, what, observed vs expected; a test alert says so first, on every
    channel, so nobody on a pager or in a mail client takes it for an outage."""
    test = "[TEST] " if alert.config_version == TEST_CONFIG_VERSION else ""
    counts = f"{_count(alert.observed)} mentions vs {_count(alert.expected)} expected"
    if alert.status == "resolved":
        peak = f", peak {_count(alert.peak_observed)}" if alert.peak_observed is not None else ""
        return f"{test}[RESOLVED] All clear: {_scope(alert)} is back to normal ({counts}{peak})"
    # An alert open again after its all clear (a spike within the cooldown) says it is back.
    verb = "Spike growing in" if alert.status == "update" else "Spike back in" if alert.sequence else "Spike in"
    return f"{test}[{alert.severity.upper()}] {verb} {_scope(alert)}: {counts}"


def digest_title(alerts: list[Alert]) -> str:
    open_count = sum(1 for a in alerts if a.status != "resolved")
    return f"earful digest: {len(alerts)} alert(s), {open_count} still open"


def sample_lines(alert: Alert) -> list[str]:
    return [
        f"[{s.source}] {truncate(s.text)}" + (f" <{s.url}>" if s.url else "") for s in alert.samples
    ]


def lines(alert: Alert) -> list[str]:
    """The plain-text body after the title."""
    out = [
        f"Severity: {alert.severity}   Score: {alert.score:.3f}",
        f"Opened: {alert.opened_at:%Y-%m-%d %H:%M} UTC   Window: {alert.window_start:%H:%M} UTC",
    ]
    if alert.authors is not None:
        out.append(f"Mentions in the window: {alert.observed:.0f} from {alert.authors} distinct authors")
    if alert.resolved_at is not None:
        out.append(f"Resolved: {alert.resolved_at:%Y-%m-%d %H:%M} UTC")
    if alert.top_terms:
        out.append("Top terms: " + ", ".join(alert.top_terms))
    samples = sample_lines(alert)
    if samples:
        out.append("Sample mentions:")
        out.extend(f"  - {s}" for s in samples)
    if alert.kibana_url:
        out.append(f"Kibana: {alert.kibana_url}")
    out.append(f"Alert {alert.id} #{alert.sequence}")
    return out


def html_body(alerts: list[Alert]) -> str:
    parts = []
    for alert in alerts:
        e = html.escape
        items = "".join(
            f"<li>[{e(s.source)}] {e(truncate(s.text))}"
            + (f' (<a href="{e(s.url)}">link</a>)' if s.url else "")
            + "</li>"
            for s in alert.samples
        )
        parts.append(
            f"<h3>{e(title(alert))}</h3>"
            f"<p>Severity: <b>{e(alert.severity)}</b>; observed {_count(alert.observed)}, "
            f"expected {_count(alert.expected)}; opened {alert.opened_at:%Y-%m-%d %H:%M} UTC</p>"
            + (f"<p>Top terms: {e(', '.join(alert.top_terms))}</p>" if alert.top_terms else "")
            + (f"<ul>{items}</ul>" if items else "")
            + (f'<p><a href="{e(alert.kibana_url)}">Open in Kibana</a></p>' if alert.kibana_url else "")
            + f"<p style=\"color:#777\">Alert {e(alert.id)} #{alert.sequence}</p>"
        )
    return "<html><body>" + "<hr>".join(parts) + "</body></html>"

"""``earful alerts``: what has fired, who was told, and a way to check that a subscriber can hear us.

    earful alerts [--status open|resolved|all] [--since 24h] [--topic T] [--limit N] [--json]
    earful alerts deliveries [--failed] [--alert ID] [--since 7d] [--limit N] [--json]
    earful alerts test-subscription NAME [--severity S] [--attempts N] [--resolve/--no-resolve]

The listing reads the alerts index (one document per alert episode) and counts each alert's
deliveries by status in the deliveries index. A failed delivery is printed in red with its
subscriber and error, and failures of alerts outside the listing are counted at the end: a
subscriber who stopped hearing from us must not go unnoticed.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import click

from schemas.records import Alert, AlertSample, utcnow
from streams.alerting.notifiers import render
from streams.alerting.subscriptions import (
    Subscription,
    SubscriptionError,
    parse_subscriptions,
    redact_url,
)
from streams.settings import Settings, es_client_kwargs

__all__ = ["alerts", "commands", "sample_alert"]

OPEN = ("open", "update")  # an "update" event is an episode still open, and growing
SEVERITY_RANK = {"critical": 3, "major": 2, "minor": 1, "info": 0}
DELIVERY_STATUSES = ("sent", "held", "pending", "failed", "superseded", "cancelled")
FAILED_SHOWN = 3  # failed deliveries shown in full under each alert


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|h|d)\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _duration(value: str) -> timedelta:
    match = _DURATION.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r}: expected a duration like 30m, 24h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def _where(settings: Settings) -> str:
    """The search server, without any user:password the URL may carry."""
    parts = urlsplit(settings.es_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


@contextmanager
def _search(settings: Settings, missing: str) -> Iterator[Any]:
    """A sync client; its failures become one-line errors (``missing`` when an index is absent)."""
    from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError

    es = Elasticsearch(**{**es_client_kwargs(settings), "request_timeout": 10, "max_retries": 1})
    try:
        yield es
    except NotFoundError as exc:
        if exc.error == "index_not_found_exception":
            raise click.ClickException(missing) from None
        raise click.ClickException(f"Elasticsearch at {_where(settings)}: {exc.message}") from None
    except TransportError as exc:
        raise click.ClickException(
            f"Elasticsearch at {_where(settings)} does not answer ({type(exc).__name__}); "
            "is it running? ('earful up' starts the embedded one)") from None
    except ApiError as exc:
        raise click.ClickException(f"Elasticsearch at {_where(settings)} answered {exc.meta.status}: "
                                   f"{exc.message}") from None
    finally:
        es.close()


# --- the listing -------------------------------------------------------------------------------


def fetch_alerts(es: Any, settings: Settings, *, status: str, since: timedelta, topic: str | None,
                 limit: int) -> tuple[list[dict[str, Any]], int]:
    """Open alerts (all of them, however old), then alerts resolved within ``since``; and how many
    more matched than ``limit`` let through."""
    common = [{"term": {"topic": topic}}] if topic else []
    found: list[dict[str, Any]] = []
    matched = 0
    if status in ("open", "all"):
        response = es.search(index=settings.index_alerts, size=limit,
                             query={"bool": {"filter": [*common, {"terms": {"status": list(OPEN)}}]}},
                             sort=[{"updated_at": {"order": "desc"}}], track_total_hits=True)
        matched += response["hits"]["total"]["value"]
        opened = [hit["_source"] for hit in response["hits"]["hits"]]
        # Most severe first; among equals the most recently updated (the search order, kept).
        opened.sort(key=lambda a: -SEVERITY_RANK.get(a.get("severity", ""), -1))
        found.extend(opened)
    room = limit - len(found)
    if status in ("resolved", "all"):
        start = (utcnow() - since).isoformat()
        response = es.search(index=settings.index_alerts, size=room,
                             query={"bool": {"filter": [*common, {"term": {"status": "resolved"}},
                                                        {"range": {"updated_at": {"gte": start}}}]}},
                             sort=[{"updated_at": {"order": "desc"}}], track_total_hits=True)
        matched += response["hits"]["total"]["value"]
        found.extend(hit["_source"] for hit in response["hits"]["hits"])
    return found, matched - len(found)


def fetch_delivery_counts(es: Any, settings: Settings, alert_ids: list[str],
                          since: timedelta) -> dict[str, Any]:
    """Per alert: deliveries by status and the latest failures; plus the failures within ``since``
    of alerts not in ``alert_ids``."""
    from elasticsearch import NotFoundError

    failed_hits = {"top_hits": {"size": FAILED_SHOWN, "sort": [{"at": {"order": "desc"}}],
                                "_source": ["subscription", "channel", "sequence", "attempts",
                                            "error", "at"]}}
    try:
        response = es.search(
            index=settings.index_deliveries, size=0,
            aggs={
                "listed": {
                    "filter": {"terms": {"alert_id": alert_ids}},
                    "aggs": {"alerts": {
                        "terms": {"field": "alert_id", "size": max(len(alert_ids), 1)},
                        "aggs": {"status": {"terms": {"field": "status", "size": 10}},
                                 "failed": {"filter": {"term": {"status": "failed"}},
                                            "aggs": {"latest": failed_hits}}},
                    }},
                },
                "failed_elsewhere": {"filter": {"bool": {
                    "filter": [{"term": {"status": "failed"}},
                               {"range": {"at": {"gte": (utcnow() - since).isoformat()}}}],
                    "must_not": [{"terms": {"alert_id": alert_ids}}]}}},
            },
        )
    except NotFoundError:
        return {"per_alert": {}, "failed_elsewhere": 0}  # no delivery yet: nothing subscribed
    per_alert = {}
    for bucket in response["aggregations"]["listed"]["alerts"]["buckets"]:
        per_alert[bucket["key"]] = {
            "counts": {b["key"]: b["doc_count"] for b in bucket["status"]["buckets"]},
            "failed": [h["_source"] for h in bucket["failed"]["latest"]["hits"]["hits"]],
        }
    return {"per_alert": per_alert,
            "failed_elsewhere": response["aggregations"]["failed_elsewhere"]["doc_count"]}


def _when(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _deliveries_line(counts: dict[str, int]) -> str:
    parts = []
    for status in DELIVERY_STATUSES:
        n = counts.get(status, 0)
        if status == "failed" and n:
            parts.append(click.style(f"{n} FAILED", fg="red", bold=True))
        elif n or status in ("sent", "held", "pending"):
            parts.append(f"{n} {status}")
    return ", ".join(parts)


def render_alerts(found: list[dict[str, Any]], deliveries: dict[str, Any], more: int, since: str) -> str:
    lines: list[str] = []
    for alert in found:
        scope = f"{alert['topic']} on {alert['source']}" if alert.get("source") else alert["topic"]
        status = alert["status"]
        badge = click.style(status.upper(), fg="yellow" if status in OPEN else "green", bold=True)
        severity = alert.get("severity", "?")
        if severity in ("critical", "major") and status in OPEN:
            severity = click.style(severity, fg="red")
        lines.append(f"{badge} {severity}  {scope}  [{alert['id']} #{alert.get('sequence', 0)}]")
        times = f"  opened {_when(alert.get('opened_at'))}, updated {_when(alert.get('updated_at'))}"
        if alert.get("resolved_at"):
            times += f", resolved {_when(alert['resolved_at'])}"
        lines.append(times)
        peak = f", peak {_count(alert['peak_observed'])}" if alert.get("peak_observed") is not None else ""
        lines.append(f"  {_count(alert.get('observed'))} mentions vs {_count(alert.get('expected'))} "
                     f"expected{peak}, score {alert.get('score', 0):.3f}")
        if alert.get("top_terms"):
            lines.append("  top terms: " + ", ".join(alert["top_terms"]))
        if alert.get("kibana_url"):
            lines.append(f"  kibana: {alert['kibana_url']}")
        mine = deliveries["per_alert"].get(alert["id"])
        if mine is None:
            lines.append("  deliveries: none")
        else:
            lines.append("  deliveries: " + _deliveries_line(mine["counts"]))
            for failure in mine["failed"]:
                lines.append(click.style(
                    f"    FAILED {failure.get('subscription')} ({failure.get('channel')}) event "
                    f"#{failure.get('sequence')} after {failure.get('attempts')} attempt(s), "
                    f"{_when(failure.get('at'))}: {failure.get('error') or 'no error recorded'}",
                    fg="red"))
            hidden = mine["counts"].get("failed", 0) - len(mine["failed"])
            if hidden > 0:
                lines.append(click.style(f"    ... and {hidden} more failed", fg="red"))
        lines.append("")
    if more:
        lines.append(f"... {more} more alert(s) match: raise --limit to see them")
    elsewhere = deliveries["failed_elsewhere"]
    if elsewhere:
        noun = "delivery" if elsewhere == 1 else "deliveries"
        lines.append(click.style(
            f"{elsewhere} failed {noun} in the last {since} of alerts not listed above: "
            f"'earful alerts deliveries --failed --since {since}' shows them", fg="red", bold=True))
    return "\n".join(lines).rstrip("\n")


@click.group(invoke_without_command=True)
@click.option("--status", "status", type=click.Choice(["open", "resolved", "all"]), default="all",
              show_default=True, help="Open alerts, resolved ones, or both (open first).")
@click.option("--since", default="24h", show_default=True,
              help="How far back resolved alerts go; open alerts are always listed.")
@click.option("--topic", help="Only this topic.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the alerts as JSON.")
@click.pass_context
def alerts(ctx: click.Context, status: str, since: str, topic: str | None, limit: int,
           as_json: bool) -> None:
    """Alerts from Elasticsearch, open ones first, with their deliveries (failures in red)."""
    if ctx.invoked_subcommand is not None:
        return
    settings: Settings = ctx.obj
    window = _duration(since)
    missing = (f"no alerts yet: the index {settings.index_alerts} does not exist "
               "(the worker creates it with the first alert)")
    with _search(settings, missing) as es:
        found, more = fetch_alerts(es, settings, status=status, since=window, topic=topic, limit=limit)
        deliveries = fetch_delivery_counts(es, settings, [a["id"] for a in found], window)
    if as_json:
        import orjson

        out = [{**a, "deliveries": deliveries["per_alert"].get(a["id"], {"counts": {}, "failed": []})}
               for a in found]
        report = {"alerts": out, "more": more,
                  "failed_deliveries_of_other_alerts": deliveries["failed_elsewhere"]}
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        what = {"open": "no open alerts", "resolved": f"no alerts resolved in the last {since}",
                "all": f"no open alerts, none resolved in the last {since}"}[status]
        click.echo(what + (f" for topic {topic!r}" if topic else ""))
    text = render_alerts(found, deliveries, more, since)
    if text:
        click.echo(text)


# --- the delivery log --------------------------------------------------------------------------


@alerts.command()
@click.option("--failed", "only_failed", is_flag=True, help="Only deliveries that failed for good.")
@click.option("--alert", "alert_id", help="Only the deliveries of this alert.")
@click.option("--since", default="7d", show_default=True,
              help="How far back (by last change).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@click.pass_obj
def deliveries(settings: Settings, only_failed: bool, alert_id: str | None, since: str,
               limit: int, as_json: bool) -> None:
    """The delivery log: one line per alert event and subscriber, newest first."""
    filters: list[dict[str, Any]] = [{"range": {"at": {"gte": (utcnow() - _duration(since)).isoformat()}}}]
    if only_failed:
        filters.append({"term": {"status": "failed"}})
    if alert_id:
        filters.append({"term": {"alert_id": alert_id}})
    missing = f"no deliveries yet: the index {settings.index_deliveries} does not exist"
    with _search(settings, missing) as es:
        response = es.search(index=settings.index_deliveries, size=limit,
                             query={"bool": {"filter": filters}}, sort=[{"at": {"order": "desc"}}],
                             source_excludes=["alert"])
    records = [hit["_source"] for hit in response["hits"]["hits"]]
    if as_json:
        import orjson

        click.echo(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode())
        return
    if not records:
        click.echo(f"no {'failed ' if only_failed else ''}deliveries in the last {since}")
        return
    for r in records:
        status = r["status"]
        shown = f"{status.upper() if status == 'failed' else status:<10}"
        if status == "failed":
            shown = click.style(shown, fg="red", bold=True)
        line = (f"{_when(r.get('at'))}  {shown} {r['subscription']} ({r.get('channel')})  "
                f"{r.get('topic')} [{r['alert_id']} #{r.get('sequence')} {r.get('alert_status')}]  "
                f"attempts {r.get('attempts', 0)}")
        if status in ("held", "pending") and r.get("next_attempt_at"):
            why = f"{r['reason']}, " if r.get("reason") else ""
            line += f"  ({why}next try {_when(r['next_attempt_at'])})"
        click.echo(line)
        if r.get("error"):
            click.echo(click.style(f"    {r['error']}", fg="red" if status == "failed" else None))


# --- test-subscription -------------------------------------------------------------------------


def sample_alert(settings: Settings, severity: str = "info") -> Alert:
    """A realistic outage alert, labelled as a test wherever a receiver may look."""
    now = utcnow()
    label = "[TEST from earful, no action needed]"
    return Alert(
        id=f"test-{uuid.uuid4().hex[:12]}", topic="outage", status="open", severity=severity,  # type: ignore[arg-type]
        opened_at=now, updated_at=now, window_start=now - timedelta(minutes=15),
        observed=87, expected=12.5, score=0.998, top_terms=["test", "portal", "down", "login"],
        samples=[
            AlertSample(id="test-1", source="mastodon",
                        text=f"{label} Is the tax portal down for anyone else? Can't log in to lodge my return."),
            AlertSample(id="test-2", source="bluesky",
                        text=f"{label} myGov keeps timing out when I try to link the ATO, third try tonight."),
        ],
        config_version=render.TEST_CONFIG_VERSION, kibana_url=settings.kibana_url.rstrip("/") + "/app/discover",
    )


def _target(sub: Subscription) -> str:
    channel = sub.channel
    if channel.type == "email":
        return f"{channel.host}:{channel.port} to {', '.join(channel.to)}"
    return redact_url(channel.url)


def _configured(settings: Settings) -> list[dict[str, Any]]:
    import yaml

    try:
        config = settings.config()
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{settings.config_file}: not valid YAML: {exc}") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {settings.config_file}: {exc}") from None
    raw = config.get("subscriptions") or []
    if not isinstance(raw, list):
        raise click.ClickException(f"{settings.config_file}: subscriptions: expected a list")
    return [entry for entry in raw if isinstance(entry, dict)]


@alerts.command("test-subscription")
@click.argument("name")
@click.option("--severity", type=click.Choice(list(SEVERITY_RANK)[::-1]), default="info",
              show_default=True, help="Severity of the test alert (a pager may act on it).")
@click.option("--attempts", type=click.IntRange(min=1, max=10), default=3, show_default=True,
              help="Tries before giving up (1s, 2s, ... apart).")
@click.option("--resolve/--no-resolve", default=None,
              help="Follow with the test alert's all-clear. Default: only for PagerDuty, so the "
                   "test does not leave an incident open on the on-call's pager.")
@click.pass_obj
def send_test_subscription(settings: Settings, name: str, severity: str, attempts: int,
                           resolve: bool | None) -> None:
    """Send a test alert through subscription NAME now, ignoring its rules; nothing is logged."""
    from streams.alerting.delivery import Dispatcher, InMemoryDeliveryLog, RetryPolicy

    entries = _configured(settings)
    names = [str(e.get("name")) for e in entries]
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise click.ClickException(
            f"no subscription {name!r} in {settings.config_file}; configured: {known}")
    # Only this entry is validated: a secret another subscription needs may be unset here.
    try:
        [sub] = parse_subscriptions([entries[names.index(name)]])
    except SubscriptionError as exc:
        raise click.ClickException(str(exc)) from None

    alert = sample_alert(settings, severity)
    disabled = "" if sub.enabled else " (disabled in the config: sent anyway)"
    click.echo(f"sending test alert {alert.id} to {name!r}: {sub.channel.type} -> {_target(sub)}{disabled}")

    if resolve is None:
        resolve = sub.channel.type == "pagerduty"
    events = [alert]
    if resolve:
        now = utcnow()
        events.append(alert.model_copy(update={"status": "resolved", "resolved_at": now, "updated_at": now,
                                               "observed": 11.0, "peak_observed": alert.observed,
                                               "sequence": alert.sequence + 1}))

    async def send() -> list[tuple[bool, int, str | None]]:
        dispatcher = Dispatcher([sub], InMemoryDeliveryLog(), policy=RetryPolicy(inline_attempts=attempts))
        outcomes = []
        try:
            for event in events:
                outcomes.append(await dispatcher.send_test(name, event))
                if not outcomes[-1][0]:
                    break
        finally:
            await dispatcher.aclose()
        return outcomes

    for event, (ok, tries, error) in zip(events, asyncio.run(send()), strict=False):
        what = "all-clear" if event.status == "resolved" else "alert"
        if not ok:
            raise click.ClickException(
                f"{name}: test {what} not delivered after {tries} attempt(s): {_scrub(error, sub)}")
        click.echo(click.style("ok", fg="green", bold=True) + f": test {what} delivered in {tries} attempt(s)")


def _scrub(error: str | None, sub: Subscription) -> str:
    """The notifiers already redact; this makes sure no URL or key of the channel slips through."""
    text = error or "no error given"
    for field in ("url", "routing_key", "password", "secret"):
        value = getattr(sub.channel, field, None)
        if value is not None:
            raw = value.get_secret_value()
            if raw:
                text = text.replace(raw, redact_url(raw) if field == "url" else "***")
    return text


commands = [alerts]

"""Spikes end to end: real posts through Kafka and a real worker raise one alert per episode,
delivered once per event to a local webhook receiver and a local SMTP server, and indexed.

Windows are a few seconds long here (EARFUL_ALERT_WINDOW_SECONDS) so an episode (a quiet
baseline, a spike that grows, calm again) fits in a minute or two; the code path is the
one a 60-second window takes.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from schemas import Mention
from tests.integration.conftest import ROOT, Inbox, Stack, consume_all, wait_for
from tests.integration.faulty_proxy import FaultyProxy

WINDOW = 3.0
WORKER_ENV = {"EARFUL_ALERT_WINDOW_SECONDS": str(WINDOW), "EARFUL_ALERT_GRACE_SECONDS": "5",
              "EARFUL_ALERT_TICK_SECONDS": "0.5"}
SECRET = "hook-secret"
SAMPLE = ROOT / "connectors" / "samples" / "crisislext26-sample.csv"
OUTAGE_POSTS = [
    "myGov is down again, can't lodge my tax return",
    "Is the ATO portal down for anyone else? Error page every time I try to lodge",
    "ATO online services not working tonight #myGov",
    "Can't get into myGov, keeps timing out. Is the tax office site down?",
]


class Hooks:
    """A webhook receiver that checks the signature; it can refuse requests for a while."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.down = False
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                with hooks.lock:
                    if hooks.down:
                        self.send_response(503)
                        self.end_headers()
                        return
                    if not any(hmac.compare_digest(v, expected) for _, v in self.headers.items()):
                        hooks.bad_signatures += 1
                    else:
                        hooks.received.append(json.loads(body) | {"key": self.headers.get("Idempotency-Key")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def events(self) -> list[tuple[str, int, str]]:
        with self.lock:
            return [(h["alert"]["id"], h["alert"]["sequence"], h["alert"]["status"]) for h in self.received]


@contextlib.contextmanager
def _receivers(stack: Stack, smtp: tuple[Inbox, int],
               delivery: dict[str, Any] | None = None) -> Iterator[tuple[Hooks, Inbox]]:
    hooks = Hooks()
    inbox, smtp_port = smtp
    server = ThreadingHTTPServer(("127.0.0.1", 0), hooks.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config: dict[str, Any] = {
        "alerting": {
            # The baseline learns from the first windows of background chatter.
            "detector": {"warmup_minutes": 0.25, "window_minutes": 0, "min_count": 5},
            "lifecycle": {"calm_windows": 2, "cooldown": "10m"},
        },
        "subscriptions": [
            {"name": "ops-hook", "topics": ["outage"], "min_severity": "minor",
             "channel": {"type": "webhook", "url": f"http://127.0.0.1:{server.server_port}/hook",
                         "secret": SECRET, "timeout": 5}},
            {"name": "comms-mail", "topics": ["outage"],
             "channel": {"type": "email", "host": "127.0.0.1", "port": smtp_port, "security": "none",
                         "from": "earful@agency.example", "to": ["comms@agency.example"]}},
        ],
    }
    if delivery is not None:
        config["alerting"]["delivery"] = delivery
    Path(stack.env["EARFUL_CONFIG_FILE"]).write_text(yaml.safe_dump(config))
    try:
        yield hooks, inbox
    finally:
        server.shutdown()


@pytest.fixture
def receivers(stack: Stack, smtp: tuple[Inbox, int]) -> Iterator[tuple[Hooks, Inbox]]:
    with _receivers(stack, smtp) as both:
        yield both


@pytest.fixture
def quick_retries(stack: Stack, smtp: tuple[Inbox, int]) -> Iterator[tuple[Hooks, Inbox]]:
    """The same receivers; a failed delivery is retried by the worker's timer within seconds."""
    with _receivers(stack, smtp, {"inline_attempts": 1, "retry_backoff": "1s", "retry_every": "1s"}) as both:
        yield both


class Chatter:
    """Real posts (CrisisLexT26), a few per second, stamped now: the background of the spike."""

    def __init__(self, stack: Stack) -> None:
        with SAMPLE.open(encoding="utf-8", newline="") as handle:
            self.texts = [row["text"] for row in csv.DictReader(handle)]
        self.producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_servers)
        self.topic = stack.settings.topic_raw
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def send(self, source: str, native_id: str, text: str, times: int = 1) -> None:
        mention = Mention.build(source=source, native_id=native_id, text=text, created_at=datetime.now(UTC),
                                url=f"https://{source}.example/{native_id}", author=f"user{native_id}")
        for _ in range(times):
            self.producer.send(self.topic, key=mention.id.encode(), value=mention.model_dump_json().encode())

    def spike(self, n: int, tag: str, times: int = 1) -> None:
        """``n`` outage posts; ``times`` > 1: a source that delivers each of them again."""
        for i in range(n):
            self.send("mastodon", f"{tag}-{i}", f"{OUTAGE_POSTS[i % len(OUTAGE_POSTS)]} ({tag} {i})", times)
            if times > 1:
                self.producer.flush()  # the copies land in different batches
        self.producer.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.send("replay", f"bg-{self.sent}", self.texts[self.sent % len(self.texts)])
            self.sent += 1
            self.producer.flush()

    def __enter__(self) -> Chatter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.producer.close()


def _docs(stack: Stack, index: str) -> list[dict[str, Any]]:
    es = stack.es()
    try:
        if not es.indices.exists(index=index):
            return []
        es.indices.refresh(index=index)
        return [h["_source"] for h in es.search(index=index, size=100)["hits"]["hits"]]
    finally:
        es.close()


def _alert_docs(stack: Stack) -> list[dict[str, Any]]:
    return _docs(stack, stack.settings.index_alerts)


def _deliveries(stack: Stack) -> list[dict[str, Any]]:
    return _docs(stack, stack.settings.index_deliveries)


def _alive(stack: Stack, check: Any) -> Any:
    def predicate() -> Any:
        dead = [w for w in stack.workers[-1:] if w.poll() is not None]
        assert not dead, f"the worker stopped:\n{stack.worker_logs()}"
        return check()
    return predicate


def _warm_up(stack: Stack, chatter: Chatter) -> None:
    wait_for(_alive(stack, lambda: stack.count() > 0), timeout=90, what="the first indexed mention")
    # The detector's warm-up (15 s of windows) plus a few windows of baseline.
    time.sleep(15 + 4 * WINDOW)


def _statuses(events: list[tuple[str, int, str]]) -> list[str]:
    return [status for _, _, status in sorted(events, key=lambda e: e[1])]


def test_a_spike_raises_one_alert_delivered_updated_resolved_and_indexed(
        stack: Stack, receivers: tuple[Hooks, Inbox]) -> None:
    hooks, inbox = receivers
    worker = stack.start_worker(**WORKER_ENV)
    with Chatter(stack) as chatter:
        _warm_up(stack, chatter)
        chatter.spike(30, "a", times=2)  # delivered twice, counted once
        time.sleep(WINDOW)
        chatter.spike(150, "b")  # the next window: the spike grows, an update
        wait_for(_alive(stack, lambda: any(s == "open" for _, _, s in hooks.events())), timeout=60,
                 what="the open alert")
        wait_for(lambda: any(s == "update" for _, _, s in hooks.events()), timeout=60, what="an update")
        wait_for(lambda: any(s == "resolved" for _, _, s in hooks.events()), timeout=90,
                 what="the all clear")
        time.sleep(3 * WINDOW)  # anything still to come would come now
    assert worker.poll() is None, stack.worker_logs()

    events = hooks.events()
    assert hooks.bad_signatures == 0
    assert len({alert_id for alert_id, _, _ in events}) == 1, events  # one episode, one alert
    assert len(events) == len(set(events)), f"an event was delivered twice: {events}"
    statuses = _statuses(events)
    assert statuses[0] == "open" and statuses[-1] == "resolved" and "update" in statuses, statuses
    assert statuses.count("open") == 1 and statuses.count("resolved") == 1
    assert [seq for _, seq, _ in sorted(events, key=lambda e: e[1])] == list(range(len(events)))
    assert len({h["key"] for h in hooks.received}) == len(events)
    opened = next(h["alert"] for h in hooks.received if h["alert"]["status"] == "open")
    # Every spike post has its own author, and one counted twice would make observed > authors.
    assert opened["authors"] == opened["observed"] >= 5

    # The same events reached the mailbox, once each.
    wait_for(lambda: len(inbox.messages) >= len(events), timeout=30, what="the e-mails")
    assert len(inbox.messages) == len(events)
    assert len({message_from_bytes(m)["Message-ID"] for m in inbox.messages}) == len(events)

    # The alert document followed the lifecycle to its end, with its evidence.
    (doc,) = _alert_docs(stack)
    assert doc["status"] == "resolved" and doc["topic"] == "outage"
    assert doc["sequence"] == len(events) - 1
    assert doc["peak_observed"] >= 30 and doc["observed"] <= doc["peak_observed"]
    assert doc["samples"] and all(s["url"] for s in doc["samples"])
    assert any(s["source"] == "mastodon" for s in doc["samples"])
    assert {"mygov", "down", "ato", "lodge"} & set(doc["top_terms"]), doc["top_terms"]
    assert doc["config_version"].startswith("alerting-") and "+tax-agency@" in doc["config_version"]

    # Every event is on the alerts topic, and the delivery log says each one was sent.
    records = consume_all(stack.settings, stack.settings.topic_alerts, expect=len(events))
    assert sorted((json.loads(r.value)["sequence"]) for r in records) == list(range(len(events)))
    deliveries = wait_for(lambda: [d for d in _deliveries(stack) if d["status"] == "sent"] or None,
                          timeout=20, what="the delivery log")
    sent = [d for d in _deliveries(stack) if d["status"] == "sent"]
    assert len(sent) == 2 * len(events), deliveries


def test_a_worker_restart_during_an_open_alert_neither_reopens_it_nor_loses_the_resolve(
        stack: Stack, receivers: tuple[Hooks, Inbox]) -> None:
    hooks, _ = receivers
    worker = stack.start_worker(**WORKER_ENV)
    with Chatter(stack) as chatter:
        _warm_up(stack, chatter)
        chatter.spike(40, "a")
        wait_for(_alive(stack, lambda: any(s == "open" for _, _, s in hooks.events())), timeout=60, what="the open alert")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        chatter.spike(20, "b")  # the spike goes on while no worker is running
        stack.start_worker(**WORKER_ENV)
        # When the kill came between the webhook's answer and the record of it, the restarted
        # worker takes the send over after its claim's lease (170 s for a webhook).
        wait_for(lambda: any(s == "resolved" for _, _, s in hooks.events()), timeout=300,
                 what="the all clear from the restarted worker")
        time.sleep(3 * WINDOW)

    events = hooks.events()
    assert len({alert_id for alert_id, _, _ in events}) == 1, events
    statuses = _statuses(events)
    assert statuses.count("open") == 1 and statuses.count("resolved") == 1, statuses
    assert len(events) == len(set(events)), events
    (doc,) = _alert_docs(stack)
    assert doc["status"] == "resolved"


class Spike:
    """Outage posts, the same number every window, until stopped: an alert that stays open."""

    def __init__(self, chatter: Chatter, per_window: int) -> None:
        self.chatter, self.per_window = chatter, per_window
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        window = 0
        while not self._stop.is_set():
            self.chatter.spike(self.per_window, f"s{window}")
            window += 1
            self._stop.wait(WINDOW)

    def __enter__(self) -> Spike:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_an_alert_the_receiver_missed_while_down_is_retried_by_the_worker_once_it_is_back(
        stack: Stack, quick_retries: tuple[Hooks, Inbox]) -> None:
    hooks, _ = quick_retries
    hooks.down = True
    worker = stack.start_worker(**WORKER_ENV)
    with Chatter(stack) as chatter:
        _warm_up(stack, chatter)
        with Spike(chatter, 30):
            # The receiver answers 503: the worker's one in-line try fails and it keeps the delivery.
            failed = wait_for(_alive(stack, lambda: [
                d for d in _deliveries(stack) if d["subscription"] == "ops-hook" and d["status"] == "pending"
                and d["attempts"] >= 1 and "503" in (d.get("error") or "")] or None),
                timeout=90, what="a failed delivery kept for a retry")
            assert hooks.events() == []
            hooks.down = False
            wait_for(_alive(stack, lambda: hooks.events() or None), timeout=60,
                     what="the alert, sent again by the worker's retry timer")
        wait_for(lambda: any(s == "resolved" for _, _, s in hooks.events()), timeout=90, what="the all clear")
        time.sleep(3 * WINDOW)
    assert worker.poll() is None, stack.worker_logs()

    events = hooks.events()
    assert hooks.bad_signatures == 0
    assert len({alert_id for alert_id, _, _ in events}) == 1, events
    assert len(events) == len(set(events)), f"an event was delivered twice: {events}"
    statuses = _statuses(events)
    assert statuses[0] == "open" and statuses.count("open") == 1 and statuses[-1] == "resolved", statuses
    retried = next(d for d in _deliveries(stack) if d["id"] == failed[0]["id"])
    assert retried["status"] == "sent" and retried["attempts"] >= 2, retried


def test_an_alert_the_search_server_refused_is_stored_and_delivered_once_it_takes_it(
        stack: Stack, receivers: tuple[Hooks, Inbox]) -> None:
    hooks, _ = receivers
    with FaultyProxy(stack.settings.es_url, refuse_paths=stack.settings.index_alerts) as proxy:
        proxy.set_refuse(503)  # the alerts index refuses reads and writes; the mentions go in
        worker = stack.start_worker(EARFUL_ES_URL=proxy.url, **WORKER_ENV)
        with Chatter(stack) as chatter:
            _warm_up(stack, chatter)
            with Spike(chatter, 30):
                wait_for(_alive(stack, lambda: proxy.refused_so_far() >= 3), timeout=90,
                         what="the alert's requests to its index, refused")
                time.sleep(2)
                assert hooks.events() == [] and _alert_docs(stack) == []
                proxy.set_refuse(None)
                wait_for(_alive(stack, lambda: hooks.events() or None), timeout=60,
                         what="the alert, once the search server takes it")
            wait_for(lambda: any(s == "resolved" for _, _, s in hooks.events()), timeout=90,
                     what="the all clear")
            time.sleep(3 * WINDOW)
        assert worker.poll() is None, stack.worker_logs()

    events = hooks.events()
    statuses = _statuses(events)
    assert statuses[0] == "open" and statuses.count("open") == 1 and statuses[-1] == "resolved", statuses
    assert len(events) == len(set(events)), f"an event was delivered twice: {events}"
    (doc,) = _alert_docs(stack)
    assert doc["status"] == "resolved" and doc["sequence"] == len(events) - 1


def test_an_alert_the_search_server_refuses_outright_is_set_aside_with_its_reason(
        stack: Stack, receivers: tuple[Hooks, Inbox]) -> None:
    hooks, _ = receivers
    with FaultyProxy(stack.settings.es_url, refuse_paths=stack.settings.index_alerts) as proxy:
        proxy.set_refuse(400)  # e.g. a mapping that refuses the document: trying again cannot help
        worker = stack.start_worker(EARFUL_ES_URL=proxy.url, **WORKER_ENV)
        with Chatter(stack) as chatter:
            _warm_up(stack, chatter)
            chatter.spike(40, "x")

            def set_aside() -> list[dict[str, Any]]:
                records = consume_all(stack.settings, stack.settings.topic_rejected, expect=1, timeout=2)
                return [json.loads(r.value) for r in records]

            rejected = wait_for(_alive(stack, set_aside), timeout=90, what="the alert event set aside")[0]
        assert worker.poll() is None, stack.worker_logs()  # not stuck, not stopped
    assert rejected["topic"] == stack.settings.topic_alerts and rejected["offset"] == 0
    assert rejected["reason"].startswith("alert event not stored or delivered: refused by the search server")
    alert = json.loads(rejected["payload"])
    assert alert["topic"] == "outage" and alert["status"] == "open" and alert["sequence"] == 0
    # The dashboards miss it, but the subscribers were told.
    assert (alert["id"], 0, "open") in hooks.events()


def _counted_ids(stack: Stack, topic: str) -> set[str]:
    """The mention ids in the count deltas of ``topic`` on the counts topic so far."""
    records = consume_all(stack.settings, stack.settings.topic_counts, expect=10**9, timeout=2)
    ids: set[str] = set()
    for record in records:
        value = json.loads(record.value)
        if value.get("kind") == "delta" and value.get("topic") == topic:
            ids.update(i for found in value.get("ids", {}).values() for i in found)
    return ids


def test_mentions_indexed_before_a_crash_are_still_counted(stack: Stack) -> None:
    """A worker died after its bulk request and before the batch's counts were sent: the batch
    is read again and its mentions are already in the index. They still count for alerting."""
    now = datetime.now(UTC)
    mentions = [Mention.build(source="mastodon", native_id=f"crash-{i}", created_at=now,
                              text=f"{OUTAGE_POSTS[i % len(OUTAGE_POSTS)]} ({i})", author=f"user-crash-{i}")
                for i in range(20)]
    es = stack.es()
    try:  # what the worker that died managed to do
        for m in mentions:
            es.index(index=stack.settings.index_mentions, id=m.id,
                     document={"id": m.id, "source": m.source, "text": m.text, "created_at": now.isoformat()})
    finally:
        es.close()
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_servers)
    for m in mentions:
        producer.send(stack.settings.topic_raw, key=m.id.encode(), value=m.model_dump_json().encode())
    producer.flush()
    producer.close()

    stack.start_worker()
    expected = {m.id for m in mentions}
    wait_for(_alive(stack, lambda: expected <= _counted_ids(stack, "outage") or None), timeout=120,
             what="the counts of the re-read mentions")
    assert stack.count() == len(mentions)  # overwritten, not duplicated

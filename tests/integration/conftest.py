"""Integration fixtures: real broker, real search server, real worker processes.

Endpoints come from the environment (EARFUL_KAFKA_BOOTSTRAP, EARFUL_ES_URL), so
the same tests run against real clusters. They fail, never skip, when the
servers are not there: ``make test`` starts the embedded ones.
Every test gets its own topics, consumer group and indices (uuid-named).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streams import devstack
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def endpoints() -> dict[str, str]:
    missing = [name for name in ("EARFUL_KAFKA_BOOTSTRAP", "EARFUL_ES_URL") if not os.environ.get(name)]
    if missing:
        pytest.fail(f"integration tests need {', '.join(missing)} (run them with 'make test', "
                    "which starts the embedded servers)")
    settings = Settings()
    broker, search = devstack.broker_server(settings), devstack.search_server(settings)
    for server in (broker, search):
        if not devstack.port_open(server.host, server.port, timeout=2):
            pytest.fail(f"the {server.name} at {server.host}:{server.port} does not answer")
    devstack.install_templates(settings)
    return {"EARFUL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "EARFUL_ES_URL": settings.es_url}


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    """One test's private slice of the servers: topics, group, indices, and its environment."""

    env: dict[str, str]
    settings: Settings
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    tmp: Path = Path(".")

    def start_worker(self, **extra_env: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        env = {**self.env, **extra_env}
        with log.open("wb") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "streams", "worker", "--loglevel", "info"],
                                    env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        self.workers.append(proc)
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def earful(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "streams", *args], env=self.env, cwd=ROOT,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"earful {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def worker_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())

    def es(self):  # type: ignore[no-untyped-def]
        from elasticsearch import Elasticsearch

        from streams.settings import es_client_kwargs

        return Elasticsearch(**es_client_kwargs(self.settings))

    def count(self, index: str | None = None) -> int:
        es = self.es()
        try:
            index = index or self.settings.index_mentions
            if not es.indices.exists(index=index):
                return 0
            es.indices.refresh(index=index)
            return int(es.count(index=index)["count"])
        finally:
            es.close()


@pytest.fixture
def stack(endpoints: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:10]
    overrides = {
        "EARFUL_APP_ID": f"earful-test-{tag}",
        "EARFUL_TOPIC_RAW": f"mentions.raw.{tag}",
        "EARFUL_TOPIC_REJECTED": f"mentions.rejected.{tag}",
        "EARFUL_TOPIC_COUNTS": f"mentions.counts.{tag}",
        "EARFUL_TOPIC_ALERTS": f"alerts.{tag}",
        "EARFUL_TOPIC_STATUS": f"connectors.status.{tag}",
        "EARFUL_INDEX_MENTIONS": f"earful-mentions-{tag}",
        "EARFUL_INDEX_ALERTS": f"earful-alerts-{tag}",
        "EARFUL_INDEX_DELIVERIES": f"earful-deliveries-{tag}",
        "EARFUL_DATA_DIR": str(tmp_path / "data"),
        "EARFUL_CONFIG_FILE": str(tmp_path / "earful.yaml"),
    }
    env = {**os.environ, **endpoints, **overrides}
    old = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        settings = Settings()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    devstack.create_topics(settings)
    st = Stack(env=env, settings=settings, tmp=tmp_path)
    yield st
    for proc in st.workers:
        st.stop_worker(proc)
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(st.worker_logs())
    es = st.es()
    try:
        # By name: Elasticsearch refuses wildcard deletes by default (destructive_requires_name).
        names = [st.settings.index_mentions, st.settings.index_alerts, st.settings.index_deliveries]
        es.indices.delete(index=",".join(names), ignore_unavailable=True, allow_no_indices=True)
    except Exception:  # noqa: BLE001 - clean-up only
        pass
    finally:
        es.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def consume_all(settings: Settings, topic: str, *, expect: int, timeout: float = 30.0) -> list[Any]:
    """Read a topic from the beginning until ``expect`` records arrived (or time runs out)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=250).values():
                out.extend(messages)
        return out
    finally:
        consumer.close()


class Inbox:
    """A local SMTP server's mailbox: the raw messages it accepted."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's API
        self.messages.append(envelope.content)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on a free local port (aiosmtpd), and its mailbox."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()

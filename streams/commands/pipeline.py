"""``earful worker``, ``earful run`` and ``earful status``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

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
    bundled sample of real posts, replayed at real pace, and the live sources reachable.
    """
    env = dict(os.environ)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with devstack.running(settings):
            children = [_spawn(["worker"], env), _spawn(["connect"], env)]
            click.echo(f"earful is running: Kafka {settings.kafka_bootstrap}, Elasticsearch "
                       f"{settings.es_url} (index {settings.index_mentions}). "
                       "'earful status' in another shell shows progress; Ctrl-C stops everything.")
            while not stop.is_set():
                if all(child.poll() is not None for child in children):
                    break
                stop.wait(1.0)
            _stop_children(children)
    except devstack.StackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("stopped")


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

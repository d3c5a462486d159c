"""Connector commands: ``earful replay``, ``earful connect``, ``earful connectors``, ``earful ingest-server``."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from connectors import registry
from connectors.base import Connector, FatalError, Page
from connectors.config import ConfigError, IngestConfig, SourceConfig
from connectors.config import load as load_config
from connectors.cursors import FileCursorStore, MemoryCursorStore
from connectors.replay import ReplayConnector, ReplayOptions
from connectors.runner import MentionProducer, Runner
from streams.settings import Settings


def make_producer(settings: Settings) -> MentionProducer:
    return MentionProducer(settings.kafka_servers, topic_raw=settings.topic_raw,
                           topic_rejected=settings.topic_rejected, topic_status=settings.topic_status)


def run_until_signal(runner: Runner, coro: object) -> None:
    """Run the runner's coroutine; Ctrl-C or SIGTERM stops it after the page in flight."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.stop)
        await coro  # type: ignore[misc]

    asyncio.run(main())


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="File format (default: from the file name).")
@click.option("--source", default=None, help="Source name for the mentions (default: the file's folder).")
@click.option("--text-col", default="text", show_default=True)
@click.option("--time-col", default=None, help="Timestamp column (default: created_at, tweet_created, ...).")
@click.option("--id-col", default=None, help="Native id column (default: id, tweet_id, ...).")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Replay N times faster than real time.")
@click.option("--as-fast-as-possible", is_flag=True, help="Ignore timestamps; send everything at once.")
@click.option("--keep-time", is_flag=True, help="Keep historical timestamps instead of re-timing to now.")
@click.option("--limit", type=int, default=None, help="Replay only the first N rows of the file.")
@click.option("--loop", is_flag=True, help="Start over at the end, until stopped (each pass is a new copy).")
@click.option("--resume", is_flag=True, help="Continue from where the last replay of this source stopped.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def replay(settings: Settings, path: Path, fmt: str | None, source: str | None, text_col: str,
           time_col: str | None, id_col: str | None, speed: float, as_fast_as_possible: bool,
           keep_time: bool, limit: int | None, loop: bool, resume: bool, quiet: bool) -> None:
    """Replay a CSV or JSONL file of posts into Kafka at real pace (or faster)."""
    if speed <= 0:
        raise click.BadParameter("must be above 0", param_hint="--speed")
    fmt = fmt or ("jsonl" if path.suffix in (".jsonl", ".ndjson", ".json") else "csv")
    source = source or _default_source(path)
    options = ReplayOptions(path=path, source=source, format=fmt, text_col=text_col,  # type: ignore[arg-type]
                            time_col=time_col, id_col=id_col, speed=speed,
                            as_fast_as_possible=as_fast_as_possible, keep_time=keep_time, limit=limit,
                            keep_raw=settings.keep_raw, loop=loop)
    connector = ReplayConnector(options)
    try:
        total = connector.total
    except Exception as exc:
        raise click.ClickException(str(exc)) from exc
    cursors = FileCursorStore(settings.data_dir / "replay-cursors.json") if resume else MemoryCursorStore()
    bar = tqdm(total=total, unit="post", desc=f"replay {source}", disable=quiet)
    counts = {"mentions": 0, "rejected": 0}

    def on_page(_: str, page: Page) -> None:
        counts["mentions"] += len(page.mentions)
        counts["rejected"] += len(page.rejected)
        bar.update(len(page.mentions) + len(page.rejected))

    try:
        producer = make_producer(settings)
    except Exception as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    runner = Runner(producer, cursors, on_page=on_page)
    try:
        run_until_signal(runner, runner.run([connector]))
    finally:
        bar.close()
        producer.close()
    click.echo(f"replayed {counts['mentions']} mentions from {path.name} "
               f"({counts['rejected']} rejected) into {settings.topic_raw}")


def _default_source(path: Path) -> str:
    name = path.parent.name or path.stem
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in name.lower()) or "replay"


def _config(settings: Settings) -> tuple[list[SourceConfig], IngestConfig]:
    try:
        return load_config(settings.config(), origin=str(settings.config_file))
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _why_not(source: SourceConfig) -> str | None:
    if not source.enabled:
        return "disabled"
    try:
        missing = source.missing_credentials()
    except FatalError as exc:  # a credential that is there but unusable
        return str(exc)
    return f"missing credentials: set {', '.join(missing)}" if missing else None


@click.command()
@click.option("--source", "names", multiple=True, help="Run only this source (repeatable; default: all).")
@click.option("--once", is_flag=True, help="Poll each source until it is caught up, then stop "
              "(a replay source plays the rest of its file once, at full speed).")
@click.pass_obj
def connect(settings: Settings, names: tuple[str, ...], once: bool) -> None:
    """Run the configured sources into Kafka (cursors kept under the data dir)."""
    sources, _ = _config(settings)
    unknown = set(names) - {s.name for s in sources}
    if unknown:
        raise click.ClickException(f"no source named {', '.join(sorted(unknown))} in {settings.config_file} "
                                   f"(configured: {', '.join(s.name for s in sources) or 'none'})")
    connectors: list[Connector] = []
    for source in sources:
        if names and source.name not in names:
            continue
        reason = _why_not(source)
        if reason:
            click.echo(f"skipping {source.name} ({source.type}): {reason}", err=True)
            continue
        if once and source.type == "replay":
            # A file is all there already: "caught up" is its end, reached without waiting for its pace.
            source = source.model_copy(update={"loop": False, "as_fast_as_possible": True})
        try:
            connectors.append(registry.build(source, settings))
        except FatalError as exc:  # e.g. a credential a request header cannot carry: this source only
            click.echo(f"skipping {source.name} ({source.type}): {exc}", err=True)
    if not connectors:
        raise click.ClickException("no source can run; see 'earful connectors'")
    try:
        producer = make_producer(settings)
    except Exception as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    cursors = FileCursorStore(settings.data_dir / "cursors.json")
    counts: dict[str, int] = {}

    def on_page(name: str, page: Page) -> None:
        counts[name] = counts.get(name, 0) + len(page.mentions)

    runner = Runner(producer, cursors, on_page=on_page)
    click.echo(f"running {', '.join(c.name for c in connectors)} into {settings.topic_raw}", err=True)
    try:
        run_until_signal(runner, runner.run(connectors, once=once))
    finally:
        producer.close()
    for name, status in runner.statuses.items():
        suffix = f" (last error: {status.last_error})" if status.last_error else ""
        click.echo(f"{name}: {counts.get(name, 0)} mentions, state {status.state}{suffix}")


def read_heartbeats(settings: Settings, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """The latest heartbeat per connector from the status topic (no consumer group: nothing to join)."""
    import orjson
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False,
                             client_id="earful-status", bootstrap_timeout_ms=int(timeout * 1000))
    try:
        partitions = consumer.partitions_for_topic(settings.topic_status) or set()
        tps = [TopicPartition(settings.topic_status, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        for tp in tps:
            # Heartbeats come every 30 s per connector: the tail of the topic is enough.
            consumer.seek(tp, max(ends[tp] - 1000, 0))
        latest: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    try:
                        beat = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(beat, dict) and beat.get("connector"):
                        latest[str(beat["connector"])] = beat
        return latest
    finally:
        consumer.close()


@click.command(name="connectors")
@click.option("--no-status", is_flag=True, help="Do not read heartbeats from Kafka.")
@click.pass_obj
def list_connectors(settings: Settings, no_status: bool) -> None:
    """List the configured sources: enabled, missing credentials, poll interval, last heartbeat."""
    sources, _ = _config(settings)
    if not sources:
        click.echo(f"no sources configured in {settings.config_file}")
        return
    beats: dict[str, dict[str, Any]] = {}
    if not no_status:
        try:
            beats = read_heartbeats(settings)
        except Exception as exc:  # noqa: BLE001 - the list is useful without heartbeats too
            click.echo(f"(no heartbeats: Kafka at {settings.kafka_bootstrap} did not answer: {exc})", err=True)
    rows = [("NAME", "TYPE", "STATUS", "POLL", "LAST HEARTBEAT")]
    for source in sources:
        beat = beats.get(source.name)
        heard = "-"
        if beat:
            heard = f"{beat.get('at', '?')} {beat.get('state', '')}"
            if beat.get("last_error"):
                heard += f" ({str(beat['last_error'])[:80]})"
        rows.append((source.name, source.type, _why_not(source) or "ready",
                     f"{source.poll_interval:g}s", heard))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


@click.command(name="ingest-server")
@click.option("--host", default=None, help="Listen address (default: from the config file, else 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (default: from the config file, else 8787).")
@click.pass_obj
def ingest_server(settings: Settings, host: str | None, port: int | None) -> None:
    """Accept mentions pushed over HTTPS/HTTP by other tools and produce them to Kafka."""
    from aiohttp import web

    from connectors.ingest import IngestServer

    _, config = _config(settings)
    try:
        secret = config.secret()
    except FatalError as exc:
        raise click.ClickException(f"ingest: {exc}") from None
    if secret is None:
        where = " or ".join(str(x) for x in (config.secret_env, config.secret_file) if x)
        raise click.ClickException(f"the ingest server needs a shared secret: set {where or 'ingest.secret_env'}")
    try:
        producer = make_producer(settings)
    except Exception as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    server = IngestServer(config, secret, producer, author_key=settings.author_hash_key)
    host, port = host or config.host, port if port is not None else config.port
    click.echo(f"accepting mentions on http://{host}:{port}{config.path} into {settings.topic_raw}", err=True)
    try:
        web.run_app(server.app(), host=host, port=port, print=None)
    finally:
        producer.close()


commands = [replay, connect, list_connectors, ingest_server]

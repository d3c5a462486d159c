"""Connector commands: ``earful replay`` (and the live sources' commands beside it)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
from tqdm import tqdm

from connectors.base import Page
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


commands = [replay]

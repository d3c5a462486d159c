"""``earful up`` / ``down`` / ``setup``: the embedded dev stack and the set-up of real clusters."""

from __future__ import annotations

import signal
import threading

import click

from streams import devstack
from streams.settings import Settings


def _stack_error(exc: devstack.StackError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.command()
@click.option("--foreground", is_flag=True, help="Keep running until Ctrl-C, then stop both servers.")
@click.pass_obj
def up(settings: Settings, foreground: bool) -> None:
    """Start the embedded broker and search server, create topics, install index templates."""
    servers = devstack.embedded_servers(settings)
    if not servers:
        click.echo("EARFUL_EMBEDDED=0: nothing to start here" if not settings.embedded
                   else "endpoints are remote: nothing to start here")
    try:
        if foreground:
            with devstack.running(settings):
                _echo_endpoints(settings)
                click.echo("running; Ctrl-C stops both servers")
                _wait_for_signal()
            click.echo("stopped")
            return
        devstack.start(settings, detach=True)
        devstack.prepare(settings)
    except devstack.StackError as exc:
        raise _stack_error(exc) from exc
    _echo_endpoints(settings)
    click.echo("stop with: earful down")


def _echo_endpoints(settings: Settings) -> None:
    click.echo(f"kafka:         {settings.kafka_bootstrap}")
    click.echo(f"elasticsearch: {settings.es_url}")


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


@click.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop the embedded servers started by ``earful up``."""
    stopped = devstack.stop(settings)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@click.command()
@click.pass_obj
def setup(settings: Settings) -> None:
    """Create topics and install index templates on the configured (possibly real) clusters."""
    try:
        devstack.prepare(settings)
    except Exception as exc:
        raise click.ClickException(f"set-up failed: {exc}") from exc
    click.echo("topics and index templates are in place")




@click.command()
@click.argument("name", required=False)
def schema(name: str | None) -> None:
    """Print the JSON Schema of a record that crosses Kafka (without NAME: list them)."""
    import json

    from schemas.jsonschema import RECORDS
    from schemas.jsonschema import schema as record_schema

    if name is None:
        for record, (_, where, what) in RECORDS.items():
            click.echo(f"{record:<16} {where:<16} {what}")
        return
    if name not in RECORDS:
        raise click.ClickException(f"no record named {name!r}; one of: {', '.join(RECORDS)}")
    click.echo(json.dumps(record_schema(name), indent=2))


commands = [up, down, setup, schema]

"""``earful``: one console script, one subcommand per job.

Each area keeps its commands beside its code (``COMMAND_MODULES``); every module
exposes ``commands``, a list of click commands. Settings are built once here and
handed down through the click context.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from streams.settings import load_settings

COMMAND_MODULES = (
    "streams.commands.stack",
    "streams.commands.pipeline",
    "connectors.cli",
    "streams.tagging.cli",
    "streams.alerting.cli",
    "streams.alerting.alerts_cli",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """earful: hear, tag, count and alert on what citizens say about the agency."""
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        # Client libraries log every connection and request at INFO.
        for noisy in ("kafka", "aiokafka", "elastic_transport", "httpx", "faust", "mode"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        ctx.obj = load_settings()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in module.commands:
            cli.add_command(command)


_register()


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(cli.main(standalone_mode=True))

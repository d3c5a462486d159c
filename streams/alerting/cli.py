"""Commands of the alerting area (each command family in its own module)."""

from __future__ import annotations

from streams.alerting import detect_cli

commands: list = [*detect_cli.commands]

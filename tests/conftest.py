"""Shared test helpers: paths to the real data sets; log levels kept across tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"the shared data sets are missing: expected them at {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _keep_log_levels() -> Iterator[None]:
    """Commands run in-process set up logging for a terminal (quieting httpx, kafka, ...):
    put it back, so a later test that reads those loggers sees their lines."""
    names = ["", "kafka", "aiokafka", "elastic_transport", "httpx", "faust", "mode"]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers

"""The connector tests share two helper modules (the fake platform server and the contract cases)
and the fixture that runs a test once per contract case."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test directories are not packages here; make the helpers beside this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, Case  # noqa: E402


@pytest.fixture(params=CASES, ids=lambda c: c.id)
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Case:
    for name, value in request.param.env.items():
        monkeypatch.setenv(name, value)
    return request.param

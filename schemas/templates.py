"""Elasticsearch index templates, read from the JSON files beside this module.

Each file is a composable index template body; its name is the template name.
An index name in settings (``earful-mentions``) matches the pattern
``earful-mentions*`` so that dated or test indices pick up the same mapping.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any


def index_templates() -> dict[str, dict[str, Any]]:
    folder = files("schemas").joinpath("elasticsearch")
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            out[entry.name.removesuffix(".json")] = json.loads(entry.read_text())
    return out

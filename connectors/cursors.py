"""Where connectors' cursors live between runs.

The runner saves a cursor only after Kafka acknowledged the page it ends, so a
restart re-reads from the last acknowledged point: no gap, and at worst the
last page again (harmless: mention ids are stable, writes are idempotent).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from connectors.base import Cursor


class CursorStore(Protocol):
    def load(self, connector: str) -> Cursor: ...

    def save(self, connector: str, cursor: Cursor) -> None: ...


class MemoryCursorStore:
    def __init__(self) -> None:
        self._cursors: dict[str, Cursor] = {}

    def load(self, connector: str) -> Cursor:
        return self._cursors.get(connector)

    def save(self, connector: str, cursor: Cursor) -> None:
        self._cursors[connector] = cursor


class FileCursorStore:
    """One JSON file holding every connector's cursor, replaced atomically on each save."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            loaded = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"cursor file {self.path} is corrupt ({exc}); move it aside to start over") from exc
        return loaded if isinstance(loaded, dict) else {}

    def load(self, connector: str) -> Cursor:
        return self._read().get(connector)

    def save(self, connector: str, cursor: Cursor) -> None:
        with self._lock:
            data = self._read()
            data[connector] = cursor
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cursors.")
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True, default=str)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)

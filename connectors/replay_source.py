"""A replay file as a configured source (``type: replay``), optionally looping for demos.

Each lap re-sends the file with lap-qualified native ids (``<id>#lap2``):
otherwise the second lap would carry the same mention ids and be dropped as
duplicates downstream, and a looping demo would go quiet after one lap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr

from connectors.base import Connector, Cursor, Page
from connectors.config import SourceConfig
from connectors.replay import ReplayConnector, ReplayOptions
from connectors.text import Pseudonymiser
from schemas import Mention

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ReplaySourceConfig(SourceConfig):
    type: Literal["replay"]
    name: str = Field(default="replay", pattern=r"^[a-z0-9_.-]+$", max_length=64)
    path: Path
    format: Literal["csv", "jsonl"] | None = None
    text_col: str = "text"
    time_col: str | None = None
    id_col: str | None = None
    speed: float = Field(default=1.0, gt=0)
    as_fast_as_possible: bool = False
    keep_time: bool = False
    loop: bool = False
    max_gap: float | None = Field(default=0.5, gt=0, description="longest wait between two posts, in seconds")

    def resolved_path(self) -> Path:
        # Relative paths in the shipped config are relative to the project, wherever earful runs from.
        if self.path.is_absolute() or self.path.exists():
            return self.path
        return PROJECT_ROOT / self.path


class LoopingReplay(Connector):
    poll_interval = 0.0

    def __init__(self, config: ReplaySourceConfig, *, author_key: SecretStr | None = None,
                 keep_raw: bool = False, **_: Any) -> None:
        self.config = config
        self.name = config.name
        self.pseudonymise = Pseudonymiser(author_key)
        path = config.resolved_path()
        fmt = config.format or ("jsonl" if path.suffix in (".jsonl", ".ndjson", ".json") else "csv")
        self.options = ReplayOptions(path=path, source=config.name, format=fmt, text_col=config.text_col,
                                     time_col=config.time_col, id_col=config.id_col, speed=config.speed,
                                     as_fast_as_possible=config.as_fast_as_possible,
                                     keep_time=config.keep_time, keep_raw=keep_raw, max_gap=config.max_gap)
        self._lap = -1
        self._inner: ReplayConnector | None = None

    async def poll(self, cursor: Cursor) -> Page:
        lap = int((cursor or {}).get("lap", 0))
        if self._inner is None or lap != self._lap:
            self._inner, self._lap = ReplayConnector(self.options), lap
        page = await self._inner.poll({"row": int((cursor or {}).get("row", 0))})
        mentions = [self._relabel(m, lap) for m in page.mentions]
        next_cursor: dict[str, Any] = {"row": int((page.next_cursor or {}).get("row", 0)), "lap": lap}
        if page.done and self.config.loop:
            return Page(mentions, {"row": 0, "lap": lap + 1}, rejected=page.rejected, has_more=True)
        return Page(mentions, next_cursor, rejected=page.rejected, has_more=page.has_more, done=page.done)

    def _relabel(self, mention: Mention, lap: int) -> Mention:
        if lap == 0 and mention.author is None:
            return mention
        fields = mention.model_dump(exclude={"id", "source", "native_id", "fetched_at", "schema_version"})
        fields["author"] = self.pseudonymise(mention.author)
        native_id = mention.native_id if lap == 0 else f"{mention.native_id}#lap{lap + 1}"
        return Mention.build(source=mention.source, native_id=native_id, **fields)

"""The sources section of the config file (``deploy/earful.yaml``), validated.

Each entry of ``sources`` names a connector type (see ``connectors.registry``)
and that platform's options. Secrets are never written in the file: an entry
names the environment variable (``token_env``) or the secret file
(``token_file``) that holds them, and they are read into ``SecretStr`` so they
print as ``**********``. A source whose credentials are missing is listed but
does not run, and ``earful connectors`` names the variable to set.

Example::

    sources:
      - name: x-recent
        type: x
        queries: ['"Australian Taxation Office" OR @ato_gov_au']
        token_env: EARFUL_X_BEARER_TOKEN
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from connectors.base import FatalError
from streams.settings import describe_errors


class ConfigError(ValueError):
    """The config file is wrong; the message says where and why."""


def read_secret(env: str | None, file: Path | None) -> SecretStr | None:
    """A secret from its env var, else from its file; None when neither holds one.

    A secret with a control character inside (a file with a second line, say) is refused,
    naming where it came from and never its value: a request header cannot carry it, and
    the HTTP library's error would quote the whole header, secret included.
    """
    if env:
        value = os.environ.get(env, "").strip()
        if value:
            return SecretStr(_one_line(value, f"environment variable {env}"))
    if file is not None:
        try:
            value = file.read_text().strip()
        except OSError:
            return None
        if value:
            return SecretStr(_one_line(value, f"secret file {file}"))
    return None


def _one_line(value: str, where: str) -> str:
    value = value.removeprefix("\ufeff").strip()  # a byte-order mark some editors write first
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise FatalError(f"the {where} holds a line break or another control character inside the secret "
                         "(a second line?): keep only the secret on one line")
    return value


@dataclass(frozen=True)
class SecretSpec:
    """One credential of a source: the config field prefix (``token`` reads ``token_env``/``token_file``)."""

    field: str
    required: bool = True


class SourceConfig(BaseModel):
    """Options every source has. Platform modules subclass it with their own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the credentials this type reads; each needs ``<field>_env`` and ``<field>_file`` attributes
    secrets: ClassVar[tuple[SecretSpec, ...]] = ()

    name: str = Field(pattern=r"^[a-z0-9_.-]+$", max_length=64,
                      description="unique; names the connector, its cursor and its heartbeats")
    type: str
    enabled: bool = True
    poll_interval: float = Field(default=60.0, gt=0, description="seconds between polls when caught up")
    timeout: float = Field(default=30.0, gt=0)

    def secret(self, field: str) -> SecretStr | None:
        return read_secret(getattr(self, f"{field}_env", None), getattr(self, f"{field}_file", None))

    def bearer(self, field: str = "token") -> tuple[dict[str, str], str | None]:
        """Authorization headers for a bearer token (none when unset), and where it comes from."""
        token = self.secret(field)
        env, file = getattr(self, f"{field}_env", None), getattr(self, f"{field}_file", None)
        where = env or (str(file) if file else None)
        if token is not None and not (token.get_secret_value().isascii() and token.get_secret_value().isprintable()):
            raise FatalError(f"the token in {where} holds characters a request header cannot carry "
                             "(not plain ASCII): check it was copied whole and alone")
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        return headers, where

    def missing_credentials(self) -> list[str]:
        """Where each required but absent credential should come from (env var or file), and
        each credential that is there but unusable, with why."""
        missing: list[str] = []
        for spec in self.secrets:
            env = getattr(self, f"{spec.field}_env", None)
            file = getattr(self, f"{spec.field}_file", None)
            where = " or ".join(str(x) for x in (env, file) if x) or f"{spec.field}_env"
            try:
                value = self.secret(spec.field)
            except FatalError as exc:
                missing.append(f"{where} ({exc})")
                continue
            if spec.required and value is None:
                missing.append(where)
        return missing

    @property
    def runnable(self) -> bool:
        return self.enabled and not self.missing_credentials()


def parse_sources(raw: Any, *, origin: str = "config") -> list[SourceConfig]:
    """Validate the ``sources`` list; ConfigError says which entry and which field is wrong."""
    from connectors.registry import config_class, known_types

    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{origin}: 'sources' must be a list of sources")
    sources: list[SourceConfig] = []
    names: set[str] = set()
    for index, entry in enumerate(raw):
        label = f"{origin}: sources[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{label}: expected a mapping with at least 'name' and 'type'")
        kind = entry.get("type")
        label += f" ({entry.get('name', '?')!s}, type {kind!s})"
        cls = config_class(str(kind)) if kind else None
        if cls is None:
            raise ConfigError(f"{label}: unknown type; known types: {', '.join(known_types())}")
        try:
            source = cls.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(f"{label}: {describe_errors(exc)}") from None
        if source.name in names:
            raise ConfigError(f"{label}: name {source.name!r} is used twice (names key the cursors)")
        names.add(source.name)
        sources.append(source)
    return sources


class IngestConfig(BaseModel):
    """The webhook ingest server (``earful ingest-server``): key ``ingest`` of the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    path: str = "/mentions"
    secret_env: str | None = "EARFUL_INGEST_SECRET"
    secret_file: Path | None = None
    signature_header: str = "X-Earful-Signature"
    #: Unix seconds the pusher signed at; when sent, the signature covers "<timestamp>.<body>"
    #: and a request older (or newer) than ``max_clock_skew_seconds`` is refused: a captured
    #: request cannot be replayed later.
    timestamp_header: str = "X-Earful-Timestamp"
    max_clock_skew_seconds: float = Field(default=300.0, gt=0)
    #: refuse signatures without a timestamp (bearer tokens are unaffected)
    require_timestamp: bool = False
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_mentions: int = Field(default=1000, gt=0)
    #: the sources pushers may claim; empty allows any valid source name
    allowed_sources: list[str] = Field(default_factory=list)

    def secret(self) -> SecretStr | None:
        return read_secret(self.secret_env, self.secret_file)


def parse_ingest(raw: Any, *, origin: str = "config") -> IngestConfig:
    try:
        return IngestConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"{origin}: ingest: {describe_errors(exc)}") from None


def load(config: dict[str, Any], *, origin: str = "config") -> tuple[list[SourceConfig], IngestConfig]:
    """Both sections of a loaded config file (``Settings.config()``)."""
    return parse_sources(config.get("sources"), origin=origin), parse_ingest(config.get("ingest"), origin=origin)

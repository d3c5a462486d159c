"""One settings object, read from ``EARFUL_*`` environment variables.

Built once in ``main()`` and passed down. Defaults point at the embedded dev stack.
Secrets are ``SecretStr``: they print as ``**********`` and never reach a log line; a
secret set to an empty string is unset (a compose file passes ``${NAME:-}`` for one the
operator left out). The YAML config file (sources, subscriptions, alerting) is read
separately, by :meth:`Settings.config`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EARFUL_", frozen=True, extra="ignore", secrets_dir=None
    )

    # Where the servers are. Pointing these at real clusters skips the embedded stack.
    kafka_bootstrap: str = "localhost:9092"
    es_url: str = "http://localhost:9200"
    es_api_key: SecretStr | None = None
    es_username: str | None = None
    es_password: SecretStr | None = None
    kibana_url: str = "http://localhost:5601"
    # Start the embedded servers for endpoints on this machine. 0 when real servers listen here
    # already (deploy/docker-compose.yml publishes Elasticsearch and Kibana on localhost).
    embedded: bool = True

    # Local state: the embedded dev stack's pid files, logs and server data, and the connectors'
    # cursors (keep those on a volume in production; the worker keeps nothing here it needs).
    data_dir: Path = PROJECT_ROOT / ".earful"

    # Kafka topics and their partition counts.
    topic_raw: str = "mentions.raw"
    topic_rejected: str = "mentions.rejected"
    topic_counts: str = "mentions.counts"
    topic_alerts: str = "alerts"
    topic_status: str = "connectors.status"
    raw_partitions: int = Field(default=4, ge=1)
    # Copies of each partition: 1 on the embedded broker, 3 on a production cluster.
    topic_replication: int = Field(default=1, ge=1)

    # Elasticsearch indices.
    index_mentions: str = "earful-mentions"
    index_alerts: str = "earful-alerts"
    index_deliveries: str = "earful-deliveries"

    # The Faust worker.
    app_id: str = "earful"
    batch_size: int = Field(default=2000, ge=1)
    batch_within: float = Field(default=0.5, gt=0)
    # One actor: it tags the next slice of a batch while the previous slice's bulk request is in
    # flight. More are safe (the worker's consumer never commits past a batch still in flight,
    # faust-streaming #606), but two measured no faster in the bench's worker stage: 5,452 and
    # 6,872 mentions/s with one, 5,972 and 6,428 with two, alternating runs.
    worker_concurrency: int = Field(default=1, ge=1)
    # Short group timeouts: a consumer-group join waits on them, and the embedded
    # broker waits out the whole rebalance window.
    broker_session_timeout: float = 6.0
    broker_heartbeat_interval: float = 1.0
    es_retry_max_backoff: float = 30.0

    # Alerting: counts per window of this many seconds; a window closes on the worker's clock
    # this long after it ended (late mentions are still indexed, but no longer counted).
    alert_window_seconds: float = Field(default=60.0, gt=0)
    alert_grace_seconds: float = Field(default=120.0, ge=0)
    alert_tick_seconds: float = Field(default=5.0, gt=0)

    # Tagging.
    taxonomy: Path = PROJECT_ROOT / "deploy" / "taxonomies" / "tax-agency.yaml"
    model: Path | None = None
    # Model tags name the word of the post that weighed most (span and text in ``why``).
    # Off trades that for throughput: it takes up to about half the TF-IDF tier's rate (make bench).
    model_evidence: bool = True

    # Sources, subscriptions: the YAML config file (see deploy/earful.yaml).
    config_file: Path = PROJECT_ROOT / "deploy" / "earful.yaml"
    # Key for pseudonymising author handles; unset keeps handles as the source gives them.
    author_hash_key: SecretStr | None = None
    keep_raw: bool = False

    @field_validator("es_api_key", "es_password", "author_hash_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty key would still be used: an author pseudonym anyone could recompute.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _raw_payloads_keep_handles(self) -> Settings:
        # A post's original payload names its author (X's includes.users, Mastodon's account,
        # a CSV's author column): kept beside a pseudonym, it would give the handle away.
        if self.keep_raw and self.author_hash_key is not None:
            raise ValueError(
                "EARFUL_KEEP_RAW=1 keeps each post's original payload, author handles included, "
                "so it would undo EARFUL_AUTHOR_HASH_KEY: set one or the other"
            )
        return self

    @property
    def kafka_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_servers[0].rsplit(":", 1)[1])

    @property
    def es_port(self) -> int:
        return urlsplit(self.es_url).port or 9200

    def config(self) -> dict[str, Any]:
        """The YAML config file (sources, subscriptions, ...), or {} when there is none."""
        if not self.config_file.exists():
            return {}
        loaded = yaml.safe_load(self.config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{self.config_file}: expected a mapping at the top level")
        return loaded

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, file_secret_settings)


def es_client_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"hosts": [settings.es_url], "request_timeout": 30}
    if settings.es_api_key is not None:
        kwargs["api_key"] = settings.es_api_key.get_secret_value()
    elif settings.es_username and settings.es_password is not None:
        kwargs["basic_auth"] = (settings.es_username, settings.es_password.get_secret_value())
    return kwargs


def describe_errors(exc: ValidationError, name: Callable[[tuple[Any, ...]], str] | None = None) -> str:
    """Every bad field and why, without the values given: a value may be a secret pasted in the
    wrong place, and a check across fields would otherwise print every field's value.
    ``name`` says how a field's location reads (default: dotted)."""
    name = name or (lambda loc: ".".join(str(part) for part in loc))
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{name(error['loc'])}: {message}" if error["loc"] else message)
    return "; ".join(lines)


def load_settings() -> Settings:
    """Settings from the environment. A bad value is a ValueError that names its ``EARFUL_``
    variable and never prints the value (it may be a secret)."""
    try:
        return Settings()
    except ValidationError as exc:
        named = describe_errors(exc, lambda loc: "EARFUL_" + "_".join(str(part) for part in loc).upper())
        raise ValueError(f"invalid settings: {named}") from None

"""Settings read from the environment: what an operator's deployment hands the services."""

from __future__ import annotations

import pytest

from connectors.text import Pseudonymiser
from streams.settings import Settings


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_secret_is_unset(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # docker compose passes ${EARFUL_AUTHOR_HASH_KEY:-} as "" when the operator set none.
    for name in ("EARFUL_AUTHOR_HASH_KEY", "EARFUL_ES_API_KEY", "EARFUL_ES_PASSWORD"):
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.author_hash_key is None
    assert settings.es_api_key is None
    assert settings.es_password is None
    # No key: handles stay as the source gives them, rather than an HMAC under an empty key
    # that anyone could recompute.
    assert Pseudonymiser(settings.author_hash_key)("@citizen") == "@citizen"


def test_a_set_secret_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARFUL_AUTHOR_HASH_KEY", "k3y")
    key = Settings().author_hash_key
    assert key is not None and key.get_secret_value() == "k3y"
    assert Pseudonymiser(key)("@citizen").startswith("anon:")


def test_raw_payloads_and_pseudonymous_authors_are_refused_together(monkeypatch: pytest.MonkeyPatch) -> None:
    # A kept payload names the author the pseudonym hides: earful says so at start, not after the fact.
    monkeypatch.setenv("EARFUL_AUTHOR_HASH_KEY", "k3y")
    monkeypatch.setenv("EARFUL_KEEP_RAW", "1")
    with pytest.raises(ValueError, match="EARFUL_KEEP_RAW=1 .* undo EARFUL_AUTHOR_HASH_KEY"):
        Settings()
    monkeypatch.setenv("EARFUL_KEEP_RAW", "0")
    assert Settings().author_hash_key is not None
    monkeypatch.delenv("EARFUL_AUTHOR_HASH_KEY")
    monkeypatch.setenv("EARFUL_KEEP_RAW", "1")
    assert Settings().keep_raw


def test_the_command_line_names_the_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from streams.cli import cli

    monkeypatch.setenv("EARFUL_AUTHOR_HASH_KEY", "k3y")
    monkeypatch.setenv("EARFUL_KEEP_RAW", "true")
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code != 0
    assert "invalid settings" in result.output and "EARFUL_KEEP_RAW=1" in result.output
    assert "k3y" not in result.output


def test_a_bad_variable_is_named_as_the_operator_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from streams.cli import cli

    monkeypatch.setenv("EARFUL_BATCH_SIZE", "lots")
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code != 0
    assert "EARFUL_BATCH_SIZE: Input should be a valid integer" in result.output

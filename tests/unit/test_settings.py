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

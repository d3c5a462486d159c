"""A credential that is there but unusable skips its own source, says why, and never shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.base import FatalError
from connectors.cli import _why_not
from connectors.config import parse_sources, read_secret


def test_a_byte_order_mark_some_editors_write_is_not_part_of_the_secret(tmp_path: Path) -> None:
    saved = tmp_path / "token"
    saved.write_text("\ufeffAAAAbearer-secret\n", encoding="utf-8")
    secret = read_secret(None, saved)
    assert secret is not None and secret.get_secret_value() == "AAAAbearer-secret"


@pytest.mark.parametrize("bad", ["tok\nexpires 2026", "tok\u2028en"])
def test_a_secret_with_a_line_break_inside_skips_only_its_source(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("EARFUL_MASTODON_TOKEN", bad)
    [mastodon] = parse_sources([{"name": "m", "type": "mastodon", "base_url": "https://mastodon.example",
                                 "searches": ["ATO"], "token_env": "EARFUL_MASTODON_TOKEN"}])
    why = _why_not(mastodon)
    assert why is not None and "EARFUL_MASTODON_TOKEN" in why and "second line" in why and bad not in why


def test_a_token_a_header_cannot_carry_is_refused_naming_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARFUL_X_BEARER_TOKEN", "AAAA\u00a0bearer")  # a no-break space pasted in
    [x] = parse_sources([{"name": "x", "type": "x", "queries": ["ATO"]}])
    with pytest.raises(FatalError) as caught:
        x.bearer()
    assert "EARFUL_X_BEARER_TOKEN" in str(caught.value) and "not plain ASCII" in str(caught.value)
    assert "AAAA" not in str(caught.value) + repr(caught.value)

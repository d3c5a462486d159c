"""Which servers the embedded stack starts on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import devstack
from streams.settings import Settings


def test_local_endpoints_mean_the_embedded_servers_unless_told_they_are_real() -> None:
    local = Settings(kafka_bootstrap="127.0.0.1:19092", es_url="http://localhost:19200")
    assert [s.name for s in devstack.embedded_servers(local)] == ["broker", "search"]
    remote = Settings(kafka_bootstrap="kafka:9092", es_url="http://127.0.0.1:9200")
    assert [s.name for s in devstack.embedded_servers(remote)] == ["search"]
    real_here = Settings(kafka_bootstrap="127.0.0.1:9092", es_url="http://127.0.0.1:9200", embedded=False)
    assert devstack.embedded_servers(real_here) == []


def test_a_taken_port_names_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devstack, "port_open", lambda host, port, timeout=0.5: True)
    settings = Settings(kafka_bootstrap="127.0.0.1:1", es_url="http://127.0.0.1:2", data_dir=tmp_path)
    with pytest.raises(devstack.StackError, match="EARFUL_EMBEDDED=0"):
        devstack.start(settings)

"""The HTTP client's request lines never show a URL's path, query or user info."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from streams.redaction import install_log_filter, redact_url

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK = "https://hooks.example.com/services/T0/B0/path-secret-1"
FEED = "https://user:pass-secret-2@news.example.org/rss?apiKey=query-secret-3"

# A fresh interpreter imports the connectors and the notifiers in the order given, then
# makes one request to a webhook and one to a feed, with httpx's INFO lines on stderr.
SCRIPT = """
import importlib, logging, sys
import httpx
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
for module in sys.argv[1:]:
    importlib.import_module(module)
client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
client.post({webhook!r}, content=b"{{}}")
client.get({feed!r})
"""


@pytest.mark.parametrize("modules", [
    ["connectors.http", "streams.alerting.notifiers.http"],
    ["streams.alerting.notifiers.http", "connectors.http"],
])
def test_request_lines_show_scheme_and_host_whichever_module_was_imported_first(modules: list[str]) -> None:
    script = SCRIPT.format(webhook=WEBHOOK, feed=FEED)
    result = subprocess.run([sys.executable, "-c", script, *modules], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    lines = [line for line in result.stderr.splitlines() if "HTTP Request" in line]
    assert len(lines) == 2, result.stderr
    assert "https://hooks.example.com" in lines[0] and "https://news.example.org" in lines[1]
    for secret in ("path-secret-1", "pass-secret-2", "query-secret-3", "/services", "/rss"):
        assert secret not in result.stderr


def test_the_filter_is_installed_once() -> None:
    install_log_filter()
    install_log_filter()
    for name in ("httpx", "httpcore"):
        assert len(logging.getLogger(name).filters) == 1


def test_other_arguments_pass_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    install_log_filter()
    caplog.set_level(logging.INFO, logger="httpx")
    logging.getLogger("httpx").info("%s %s %d", "GET", httpx.URL(WEBHOOK), 200)
    logging.getLogger("httpx").info("note: %s", "plain text is not a URL object")
    assert caplog.messages == ["GET https://hooks.example.com 200", "note: plain text is not a URL object"]


def test_redact_url() -> None:
    assert redact_url(WEBHOOK) == "https://hooks.example.com"
    assert redact_url(FEED) == "https://news.example.org"
    assert redact_url("not a url") == "<invalid url>"
    assert redact_url(None) == "<no url>"

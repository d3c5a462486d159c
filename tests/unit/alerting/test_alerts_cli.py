"""``earful alerts test-subscription`` against a local webhook receiver, and the listing's errors
when there is no search server (no server needed for either)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner, Result

from streams.alerting.notifiers.webhook import SIGNATURE_HEADER
from streams.cli import cli

TOKEN = "XXXXsecretXXXX"


class Receiver:
    """A webhook receiver on its own event loop thread: the CLI runs its own loop in the test's."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status, text="ok" if self.status < 300 else "receiver broke")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hooks/{token}", rec.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        rec.url = f"http://127.0.0.1:{port}/hooks/{TOKEN}"
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield rec
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _config(tmp_path: Path, subscriptions: list[dict[str, object]]) -> Path:
    path = tmp_path / "earful.yaml"
    path.write_text(yaml.safe_dump({"sources": [], "subscriptions": subscriptions}))
    return path


def _invoke(config: Path, *args: str, **env: str) -> Result:
    result = CliRunner().invoke(cli, ["alerts", *args], env={"EARFUL_CONFIG_FILE": str(config), **env})
    assert "Traceback" not in result.output
    return result


def test_signed_test_alert_reaches_the_webhook(tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, [
        {"name": "ops-hook", "channel": {"type": "webhook", "url": receiver.url, "secret": "${OPS_HOOK_SECRET}"}},
        # Another subscriber's secret is not set on this machine: ops-hook can still be tested.
        {"name": "comms", "channel": {"type": "slack", "url": "${COMMS_SLACK_URL}"}},
    ])
    result = _invoke(config, "test-subscription", "ops-hook", OPS_HOOK_SECRET="k3y")
    assert result.exit_code == 0, result.output
    assert "ok: test alert delivered in 1 attempt(s)" in result.output
    assert "all-clear" not in result.output
    assert "webhook -> http://127.0.0.1" in result.output and TOKEN not in result.output

    [(headers, body)] = receiver.requests
    assert headers[SIGNATURE_HEADER] == "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    payload = json.loads(body)
    alert = payload["alert"]
    assert payload["kind"] == "alert" and payload["event_key"].startswith(f"test:{alert['id']}:")
    assert alert["id"].startswith("test-") and alert["topic"] == "outage" and alert["severity"] == "info"
    assert alert["config_version"] == "test"  # the marker every channel's title shows as [TEST]
    assert len(alert["samples"]) == 2
    assert all(s["text"].startswith("[TEST from earful, no action needed]") for s in alert["samples"])


def test_failing_receiver_exits_non_zero_with_the_url_redacted(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 500
    config = _config(tmp_path, [{"name": "ops-hook", "channel": {"type": "webhook", "url": receiver.url, "secret": "hook-s3cret"}}])
    result = _invoke(config, "test-subscription", "ops-hook", "--attempts", "2", "--severity", "major")
    assert result.exit_code == 1
    assert len(receiver.requests) == 2
    assert json.loads(receiver.requests[0][1])["alert"]["severity"] == "major"
    assert "ops-hook: test alert not delivered after 2 attempt(s): http://127.0.0.1 answered 500: receiver broke" in result.output
    assert TOKEN not in result.output and "/hooks/" not in result.output


def test_resolve_follows_with_the_all_clear_of_the_same_alert(tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, [{"name": "ops-hook", "channel": {"type": "webhook", "url": receiver.url, "secret": "hook-s3cret"}}])
    result = _invoke(config, "test-subscription", "ops-hook", "--resolve")
    assert result.exit_code == 0, result.output
    assert "ok: test all-clear delivered in 1 attempt(s)" in result.output
    first, second = (json.loads(body)["alert"] for _, body in receiver.requests)
    assert (first["status"], second["status"]) == ("open", "resolved")
    assert second["id"] == first["id"] and second["sequence"] == first["sequence"] + 1


def test_pagerduty_test_incident_is_resolved_by_default(tmp_path: Path, receiver: Receiver) -> None:
    config = _config(tmp_path, [{"name": "oncall", "channel": {
        "type": "pagerduty", "routing_key": "R0UT1NGK3Y", "url": receiver.url}}])
    result = _invoke(config, "test-subscription", "oncall")
    assert result.exit_code == 0, result.output
    trigger, resolve = (json.loads(body) for _, body in receiver.requests)
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert "R0UT1NGK3Y" not in result.output and TOKEN not in result.output


def test_unknown_name_lists_the_configured_ones(tmp_path: Path) -> None:
    config = _config(tmp_path, [
        {"name": "ops-hook", "channel": {"type": "webhook", "url": "https://hooks.example/x", "secret": "hook-s3cret"}},
        {"name": "comms", "channel": {"type": "slack", "url": "https://hooks.slack.example/y"}},
    ])
    result = _invoke(config, "test-subscription", "opps-hook")
    assert result.exit_code == 1
    assert "no subscription 'opps-hook'" in result.output and "configured: ops-hook, comms" in result.output

    missing = _invoke(tmp_path / "absent.yaml", "test-subscription", "ops-hook")
    assert missing.exit_code == 1 and "configured: none" in missing.output


def test_invalid_subscription_is_reported_without_its_url(tmp_path: Path) -> None:
    config = _config(tmp_path, [{"name": "ops-hook", "channel": {"type": "webhook", "url": f"ftp://h/{TOKEN}", "secret": "hook-s3cret"}}])
    result = _invoke(config, "test-subscription", "ops-hook")
    assert result.exit_code == 1
    assert "must be an http(s) URL" in result.output and TOKEN not in result.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("args", [(), ("deliveries",)])
def test_no_search_server_is_a_clear_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _invoke(tmp_path / "absent.yaml", *args, EARFUL_ES_URL=f"http://127.0.0.1:{_closed_port()}")
    assert result.exit_code == 1
    assert "does not answer" in result.output and "earful up" in result.output


def test_bad_since_is_a_usage_error(tmp_path: Path) -> None:
    result = _invoke(tmp_path / "absent.yaml", "--since", "yesterday")
    assert result.exit_code == 2 and "expected a duration like 30m, 24h or 7d" in result.output


def test_the_delivery_line_counts_every_status_the_log_records() -> None:
    from typing import get_args

    from streams.alerting.alerts_cli import DELIVERY_STATUSES, _deliveries_line
    from streams.alerting.delivery import DeliveryStatus

    assert set(DELIVERY_STATUSES) == set(get_args(DeliveryStatus))
    line = click.unstyle(_deliveries_line({"sent": 2, "cancelled": 1}))
    assert line == "2 sent, 0 held, 0 pending, 1 cancelled"

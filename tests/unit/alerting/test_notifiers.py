from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
from datetime import UTC, datetime

import httpx
import pytest

from schemas.records import Alert, AlertSample
from streams.alerting.notifiers import (
    PermanentDeliveryError,
    RetriableDeliveryError,
    build_notifier,
)
from streams.alerting.notifiers.email import build_message
from streams.alerting.subscriptions import (
    EmailChannel,
    PagerDutyChannel,
    SlackChannel,
    TeamsChannel,
    WebhookChannel,
)

NOW = datetime(2024, 7, 1, 2, 0, tzinfo=UTC)
SECRET_URL = "https://hooks.example.com/services/T0/B0/XXXXsecretXXXX"
ALERT = Alert(
    id="a1b2c3", topic="outage", source=None, status="open", severity="major", opened_at=NOW,
    updated_at=NOW, window_start=NOW, observed=120, expected=15, score=0.999, peak_observed=120,
    top_terms=["portal", "down", "login"],
    samples=[AlertSample(id="m1", source="mastodon", text="Is the <ATO> portal down? & myGov too",
                         url="https://social.example/@a/1")],
    kibana_url="https://kibana.example/app/discover#/?x", config_version="v1",
)
RESOLVED = ALERT.model_copy(update={"status": "resolved", "sequence": 2, "resolved_at": NOW, "observed": 9})


class Recorder:
    def __init__(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.statuses = list(statuses) or [200]
        self.headers = headers or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(status, headers=self.headers, text="ok" if status < 300 else "nope")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))

    def json(self, i: int = -1) -> dict:
        return json.loads(self.requests[i].content)


async def test_webhook_body_signature_and_idempotency_key() -> None:
    rec = Recorder()
    channel = WebhookChannel(type="webhook", url=SECRET_URL, secret="s3cret")
    await build_notifier(channel, rec.client()).send(ALERT, "a1b2c3:0:ops")
    request = rec.requests[0]
    assert request.method == "POST" and str(request.url) == SECRET_URL
    assert request.headers["Idempotency-Key"] == "a1b2c3:0:ops"
    expected = "sha256=" + hmac.new(b"s3cret", request.content, hashlib.sha256).hexdigest()
    assert request.headers["X-Earful-Signature"] == expected
    body = rec.json()
    assert body["kind"] == "alert" and body["alert"]["id"] == "a1b2c3" and body["alert"]["observed"] == 120
    # A different secret gives a different signature: the header really is keyed.
    assert expected != "sha256=" + hmac.new(b"other", request.content, hashlib.sha256).hexdigest()


async def test_webhook_digest() -> None:
    rec = Recorder()
    channel = WebhookChannel(type="webhook", url=SECRET_URL, secret="s3cret")
    await build_notifier(channel, rec.client()).send_digest([ALERT, RESOLVED], "digest:ops:1")
    body = rec.json()
    assert body["kind"] == "digest" and [a["status"] for a in body["alerts"]] == ["open", "resolved"]
    expected = "sha256=" + hmac.new(b"s3cret", rec.requests[0].content, hashlib.sha256).hexdigest()
    assert rec.requests[0].headers["X-Earful-Signature"] == expected


async def test_slack_blocks_escape_and_link() -> None:
    rec = Recorder()
    await build_notifier(SlackChannel(type="slack", url=SECRET_URL), rec.client()).send(ALERT, "k")
    body = rec.json()
    assert body["text"].startswith("[MAJOR] Spike in 'outage': 120 mentions vs 15 expected")
    flat = json.dumps(body["blocks"])
    assert "&lt;ATO&gt;" in flat and "&amp; myGov" in flat
    assert "<https://social.example/@a/1|mastodon>" in flat
    assert "<https://kibana.example/app/discover#/?x|Open in Kibana>" in flat
    assert "portal, down, login" in flat


async def test_teams_adaptive_card() -> None:
    rec = Recorder()
    await build_notifier(TeamsChannel(type="teams", url=SECRET_URL), rec.client()).send(RESOLVED, "k")
    attachment = rec.json()["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["body"][0]["text"].startswith("[RESOLVED] All clear")
    assert card["actions"][0]["url"] == ALERT.kibana_url


async def test_pagerduty_trigger_then_resolve_on_the_same_dedup_key() -> None:
    rec = Recorder(202)
    channel = PagerDutyChannel(type="pagerduty", routing_key="R0UT1NG", url="http://127.0.0.1:9/v2/enqueue")
    notifier = build_notifier(channel, rec.client())
    await notifier.send(ALERT, "k0")
    await notifier.send(RESOLVED, "k2")
    trigger, resolve = rec.json(0), rec.json(1)
    assert str(rec.requests[0].url) == "http://127.0.0.1:9/v2/enqueue"
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == "a1b2c3"
    assert trigger["routing_key"] == "R0UT1NG"
    assert trigger["payload"]["severity"] == "error" and trigger["payload"]["component"] == "outage"
    assert trigger["links"][0]["href"] == ALERT.kibana_url
    assert resolve == {"routing_key": "R0UT1NG", "event_action": "resolve", "dedup_key": "a1b2c3"}
    with pytest.raises(PermanentDeliveryError):
        await notifier.send_digest([ALERT], "d")


@pytest.mark.parametrize(("status", "error"), [
    (429, RetriableDeliveryError), (500, RetriableDeliveryError), (503, RetriableDeliveryError),
    (400, PermanentDeliveryError), (403, PermanentDeliveryError), (404, PermanentDeliveryError),
])
async def test_status_codes_map_to_retriable_or_permanent(status: int, error: type[Exception]) -> None:
    rec = Recorder(status, headers={"Retry-After": "7"})
    with pytest.raises(error) as info:
        await build_notifier(SlackChannel(type="slack", url=SECRET_URL), rec.client()).send(ALERT, "k")
    assert f"answered {status}" in str(info.value)
    if status == 429:
        assert info.value.retry_after == 7.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_transport_errors_are_retriable(exc: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    client = httpx.AsyncClient(transport=httpx.MockTransport(fail))
    with pytest.raises(RetriableDeliveryError):
        await build_notifier(WebhookChannel(type="webhook", url=SECRET_URL, secret="hook-s3cret"), client).send(ALERT, "k")


async def test_full_url_never_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # the CLI quiets httpx; this test reads its lines
    rec = Recorder(200, 500)
    notifier = build_notifier(WebhookChannel(type="webhook", url=SECRET_URL, secret="hook-s3cret"), rec.client())
    await notifier.send(ALERT, "k")  # httpx logs the request at INFO
    with pytest.raises(RetriableDeliveryError) as info:
        await notifier.send(ALERT, "k")
    assert "HTTP Request" in caplog.text  # the log line is there, with the URL redacted
    assert "https://hooks.example.com" in caplog.text
    assert "secret" not in caplog.text and "secret" not in str(info.value)
    assert "https://hooks.example.com answered 500" in str(info.value)


SIGNED_URL = "https://hooks.example.com/services/T000/B000/XXXXsecretXXXX?sig=QQQQsignedQQQQ"


@pytest.mark.parametrize("echo", [
    "Cannot POST /services/T000/B000/XXXXsecretXXXX",  # Express's 404 page: the path, no query
    "no route for %2Fservices%2FT000%2FB000%2FXXXXsecretXXXX%3Fsig%3DQQQQsignedQQQQ",  # URL-encoded
    '{"error": "bad signature", "query": "sig=QQQQsignedQQQQ"}',  # the query alone
])
async def test_a_receiver_echoing_part_of_the_url_does_not_put_it_in_the_error(echo: str) -> None:
    def not_found(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text=echo)

    client = httpx.AsyncClient(transport=httpx.MockTransport(not_found))
    channel = WebhookChannel(type="webhook", url=SIGNED_URL, secret="hook-s3cret")
    with pytest.raises(PermanentDeliveryError) as info:
        await build_notifier(channel, client).send(ALERT, "k")
    text = str(info.value)
    assert "secret" not in text.lower() and "signed" not in text.lower() and "T000" not in text
    assert text.startswith("https://hooks.example.com answered 404: ") and "<redacted>" in text


def test_email_message_plain_and_html() -> None:
    channel = EmailChannel.model_validate(
        {"type": "email", "host": "127.0.0.1", "from": "earful@agency.example", "to": ["ops@agency.example"]}
    )
    msg = build_message(channel, [ALERT], "a1b2c3:0:mail", digest=False)
    again = build_message(channel, [ALERT], "a1b2c3:0:mail", digest=False)
    assert msg["Message-ID"] == again["Message-ID"]  # a resend is recognisably the same message
    assert msg["Subject"].startswith("[MAJOR] Spike in 'outage'")
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Top terms: portal, down, login" in plain and "https://social.example/@a/1" in plain
    assert "&lt;ATO&gt;" in html and 'href="https://kibana.example/app/discover#/?x"' in html


def test_a_test_alert_says_so_in_its_title_on_every_channel() -> None:
    test = ALERT.model_copy(update={"config_version": "test"})
    channel = EmailChannel.model_validate(
        {"type": "email", "host": "127.0.0.1", "from": "earful@agency.example", "to": ["ops@agency.example"]}
    )
    assert build_message(channel, [test], "t:0:mail", digest=False)["Subject"].startswith("[TEST] [MAJOR] Spike")
    resolved = RESOLVED.model_copy(update={"config_version": "test"})
    assert build_message(channel, [resolved], "t:2:mail", digest=False)["Subject"].startswith("[TEST] [RESOLVED]")
    assert not build_message(channel, [ALERT], "a:0:mail", digest=False)["Subject"].startswith("[TEST]")


class FakeSMTP:
    """Stands in for smtplib.SMTP / SMTP_SSL: remembers how it was built and what it was told."""

    instances: list[FakeSMTP] = []
    refused: dict[str, tuple[int, bytes]] = {}
    quit_error: Exception | None = None

    def __init__(self, host: str, port: int, timeout: float = 0, context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.context = host, port, context
        self.starttls_context: ssl.SSLContext | None = None
        self.sent: list[object] = []
        self.closed = False
        FakeSMTP.instances.append(self)

    def __enter__(self) -> FakeSMTP:
        return self

    def __exit__(self, *exc: object) -> None:  # as smtplib's: QUIT, then close
        try:
            self.quit()
        except smtplib.SMTPServerDisconnected:
            pass
        finally:
            self.close()

    def starttls(self, context: ssl.SSLContext | None = None) -> None:
        self.starttls_context = context

    def login(self, user: str, password: str) -> None:
        pass

    def send_message(self, msg: object) -> dict[str, tuple[int, bytes]]:
        self.sent.append(msg)
        return dict(self.refused)

    def quit(self) -> None:
        if self.quit_error is not None:
            raise self.quit_error

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> type[FakeSMTP]:
    FakeSMTP.instances, FakeSMTP.refused, FakeSMTP.quit_error = [], {}, None
    monkeypatch.setattr(smtplib, "SMTP", FakeSMTP)
    monkeypatch.setattr(smtplib, "SMTP_SSL", FakeSMTP)
    return FakeSMTP


def email_channel(**fields: object) -> EmailChannel:
    return EmailChannel.model_validate({"type": "email", "host": "mail.agency.example", "port": 465,
                                        "from": "earful@agency.example", "to": ["ops@agency.example"], **fields})


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_email_checks_the_servers_certificate_and_name(smtp: type[FakeSMTP], security: str) -> None:
    await build_notifier(email_channel(security=security)).send(ALERT, "a1b2c3:0:mail")
    [conn] = smtp.instances
    context = conn.context if security == "tls" else conn.starttls_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


async def test_email_names_the_recipients_the_server_refused(smtp: type[FakeSMTP],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    smtp.refused = {"opps@agency.example": (550, b"5.1.1 no such user")}
    channel = email_channel(to=["ops@agency.example", "opps@agency.example"])
    note = await build_notifier(channel).send(ALERT, "a1b2c3:0:mail")
    assert note is not None and "refused 1 recipient(s)" in note
    assert "opps@agency.example (550 5.1.1 no such user)" in note
    assert "opps@agency.example" in caplog.text
    # Every recipient accepted: nothing to say.
    smtp.refused = {}
    assert await build_notifier(channel).send(ALERT, "a1b2c3:0:mail") is None


async def test_email_all_recipients_refused_is_a_failure(smtp: type[FakeSMTP], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: FakeSMTP, msg: object) -> None:
        raise smtplib.SMTPRecipientsRefused({"opps@agency.example": (550, b"no such user")})

    monkeypatch.setattr(FakeSMTP, "send_message", refuse)
    with pytest.raises(PermanentDeliveryError, match="recipients refused"):
        await build_notifier(email_channel()).send(ALERT, "a1b2c3:0:mail")


@pytest.mark.parametrize("error", [smtplib.SMTPResponseException(421, b"bye"), smtplib.SMTPServerDisconnected("gone"),
                                   ConnectionResetError("reset")])
async def test_email_an_error_on_quit_after_the_message_was_taken_is_not_a_failure(
    smtp: type[FakeSMTP], error: Exception
) -> None:
    smtp.quit_error = error
    assert await build_notifier(email_channel()).send(ALERT, "a1b2c3:0:mail") is None
    [conn] = smtp.instances
    assert len(conn.sent) == 1 and conn.closed


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "nan"}, None),
    ({"Retry-After": "inf"}, None),
    ({"Retry-After": "-5"}, 0.0),
    ({"Retry-After": "1e12"}, 1e12),  # a number, if a silly one: the dispatcher caps it
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", "Date": "Wed, 21 Oct 2015 07:27:00 GMT"}, 60.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", "Date": "Wed, 21 Oct 2015 07:27:00 -0000"}, None),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", "Date": "yesterday"}, None),
])
async def test_retry_after_is_a_finite_number_of_seconds_or_none(headers: dict[str, str], expected: float | None) -> None:
    rec = Recorder(503, headers=headers)
    with pytest.raises(RetriableDeliveryError) as info:
        await build_notifier(SlackChannel(type="slack", url=SECRET_URL), rec.client()).send(ALERT, "k")
    assert info.value.retry_after == expected


async def test_a_receiver_answering_a_byte_at_a_time_is_cut_off() -> None:
    """Every byte comes well within the 0.2 s timeout, yet the whole answer would take 1.5 s:
    the request is cut off after 4 timeouts, so the send ends before its claim does."""
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"x" * 30
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = WebhookChannel(type="webhook", url=f"http://127.0.0.1:{port}/hooks/XXXXsecretXXXX", secret="hook-s3cret",
                             timeout=0.2)
    try:
        with pytest.raises(RetriableDeliveryError, match="no complete answer within 1s") as info:
            await build_notifier(channel).send(ALERT, "k")
        assert "secret" not in str(info.value)
    finally:
        server.close()


async def test_a_short_path_is_not_redacted_out_of_the_answer() -> None:
    # "/1" and a one-letter password are no secrets worth garbling "HTTP/1.1" or every "e" for.
    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="HTTP/1.1 404: no route here")

    client = httpx.AsyncClient(transport=httpx.MockTransport(refused))
    channel = WebhookChannel(type="webhook", url="https://u:e@hooks.example.com/1", secret="hook-s3cret")
    with pytest.raises(PermanentDeliveryError) as info:
        await build_notifier(channel, client).send(ALERT, "k")
    assert str(info.value) == "https://hooks.example.com answered 404: HTTP/1.1 404: no route here"

"""E-mail over SMTP (standard library, run in a thread): plain text plus an HTML part.

The Message-ID is derived from the delivery's idempotency key, so a resent message has the same
id and mail systems and clients that thread or deduplicate on it see one message.
SMTP replies map like HTTP ones: 4xx and lost connections are retriable, 5xx permanent.
If the server takes the message but refuses some recipients, the send succeeds and returns a
note naming them (logged, and kept on the delivery record); if it refuses them all, it fails.
Certificates and host names are checked for both ``tls`` and ``starttls``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from schemas.records import Alert
from streams.alerting.notifiers import render
from streams.alerting.notifiers.errors import PermanentDeliveryError, RetriableDeliveryError
from streams.alerting.subscriptions import EmailChannel

__all__ = ["EmailNotifier", "build_message"]

log = logging.getLogger(__name__)


def build_message(channel: EmailChannel, alerts: list[Alert], event_key: str, *, digest: bool) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = render.digest_title(alerts) if digest else render.title(alerts[0])
    msg["From"] = channel.sender
    msg["To"] = ", ".join(channel.to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{hashlib.sha256(event_key.encode()).hexdigest()[:32]}@earful>"
    msg["X-Earful-Idempotency-Key"] = event_key
    text_parts = []
    for alert in alerts:
        text_parts.append("\n".join([render.title(alert), "", *render.lines(alert)]))
    msg.set_content("\n\n----\n\n".join(text_parts) + "\n")
    msg.add_alternative(render.html_body(alerts), subtype="html")
    return msg


#: the server's answers one send waits for, each up to the channel's timeout, besides one per
#: recipient: connect, greeting, EHLO, STARTTLS, EHLO again, AUTH (up to two), MAIL, DATA, the
#: message's end, QUIT, and one to spare
SMTP_ROUND_TRIPS = 12


class EmailNotifier:
    def __init__(self, channel: EmailChannel) -> None:
        self.channel = channel

    def _connect(self) -> smtplib.SMTP:
        ch = self.channel
        if ch.security == "tls":
            # A verifying context: without one smtplib checks neither the certificate nor the host.
            return smtplib.SMTP_SSL(ch.host, ch.port, timeout=ch.timeout, context=ssl.create_default_context())
        return smtplib.SMTP(ch.host, ch.port, timeout=ch.timeout)

    def _deliver(self, msg: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Hand the message to the server; the recipients it refused (the others have it)."""
        ch = self.channel
        smtp = self._connect()
        try:
            if ch.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if ch.username:
                smtp.login(ch.username, ch.password.get_secret_value() if ch.password else "")
            return smtp.send_message(msg)
        finally:
            _hang_up(smtp, f"smtp://{ch.host}:{ch.port}")

    async def _send(self, msg: EmailMessage) -> str | None:
        where = f"smtp://{self.channel.host}:{self.channel.port}"
        try:
            refused = await asyncio.to_thread(self._deliver, msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentDeliveryError(f"{where}: login refused ({exc.smtp_code})") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            if all(400 <= code < 500 for code in codes):
                raise RetriableDeliveryError(f"{where}: recipients deferred {codes}") from None
            raise PermanentDeliveryError(f"{where}: recipients refused {codes}") from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            message = f"{where}: {exc.smtp_code} {text}"[:300]
            if 400 <= exc.smtp_code < 500:
                raise RetriableDeliveryError(message) from None
            raise PermanentDeliveryError(message) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentDeliveryError(f"{where}: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            # Lost connection, refused connection, timeout, TLS failure: worth another try.
            raise RetriableDeliveryError(f"{where}: {type(exc).__name__}: {exc}"[:300]) from None
        if not refused:
            return None
        note = f"{where}: sent, but the server refused {len(refused)} recipient(s): {_refusals(refused)}"[:300]
        log.warning("%s", note)
        return note

    async def send(self, alert: Alert, event_key: str) -> str | None:
        return await self._send(build_message(self.channel, [alert], event_key, digest=False))

    async def send_digest(self, alerts: list[Alert], event_key: str) -> str | None:
        return await self._send(build_message(self.channel, alerts, event_key, digest=True))


def _hang_up(smtp: smtplib.SMTP, where: str) -> None:
    """Say QUIT and close. Once the server has the message a failed goodbye changes nothing, and
    after an error it must not hide that error: either way it is only logged."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError) as exc:
        log.info("%s: closing the connection failed: %s: %s", where, type(exc).__name__, exc)
    finally:
        smtp.close()


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    parts = []
    for address, (code, reply) in sorted(refused.items()):
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        parts.append(f"{address} ({code} {text})")
    return "; ".join(parts)

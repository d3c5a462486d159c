"""Webhook push: other tools POST mentions to earful (``earful ingest-server``).

A request carries one mention (a JSON object) or several (a JSON array) in the
``Mention`` shape; ``id`` may be left out (it is derived from source and native
id, as for every mention). It is authenticated by either

- ``Authorization: Bearer <shared secret>``, or
- ``X-Earful-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by the shared secret>``,
  better with ``X-Earful-Timestamp: <unix seconds>``, the signature then covering
  ``<timestamp>.<raw body>``: a request more than ``max_clock_skew_seconds`` (5 minutes) from
  the server's clock is refused, so a captured request cannot be replayed later
  (``require_timestamp: true`` refuses signatures without one).

Answers, each with a JSON body saying why::

    202  accepted: every mention is in Kafka (acknowledged) before this answer
    400  not JSON, or not an object/array of objects
    401  no credentials (neither header)
    401  a signature without the timestamp the server requires
    403  wrong bearer secret, a signature that does not match the body, a stale timestamp
    413  body or batch too large, or a mention too large for one Kafka record
    422  a mention does not fit the schema (nothing of that request is kept)
    503  Kafka did not acknowledge: nothing is promised, send again

A request is all or nothing, so a pusher that sees anything but 202 simply
sends the same request again (ids are stable, a repeat is harmless).

``GET /schema`` answers the JSON Schema of a mention (``Mention.model_json_schema()``,
the one definition of what crosses Kafka, with ``id`` optional), for pushers to validate against.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import orjson
from aiohttp import web
from pydantic import SecretStr, ValidationError

from connectors.config import IngestConfig
from connectors.runner import MAX_MENTION_BYTES
from connectors.text import Pseudonymiser
from schemas import Mention, mention_id

log = logging.getLogger(__name__)


class Acknowledgement(Protocol):
    """The records of one send (the runner's ``Delivery``)."""

    def wait(self, timeout: float = 60.0) -> None: ...


class MentionSink(Protocol):
    """What the ingest server needs of the runner's MentionProducer."""

    def send_mentions(self, mentions: list[Mention]) -> Acknowledgement: ...


class BadRequest(Exception):
    def __init__(self, status: int, error: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.details = status, error, details


def _fits_kafka(mentions: list[Mention]) -> None:
    """Refuse, before anything is sent, a mention no Kafka record could carry: the connectors'
    runner would send it without its ``raw`` payload or reject it, and a 202 promises every
    mention as pushed."""
    too_large = [{"id": m.id, "native_id": m.native_id, "bytes": size} for m in mentions
                 if (size := len(m.model_dump_json().encode())) > MAX_MENTION_BYTES]  # bytes, as Kafka counts
    if too_large:
        raise BadRequest(413, f"{len(too_large)} mention(s) over the {MAX_MENTION_BYTES}-byte limit of one "
                              "mention in a Kafka record; nothing of this request was kept", too_large)


def _answer(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def signature(secret: SecretStr, body: bytes, timestamp: int | str | None = None) -> str:
    """The signature header value a pusher sends for ``body`` (signed at ``timestamp``, if given)."""
    signed = body if timestamp is None else f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.get_secret_value().encode(), signed, hashlib.sha256).hexdigest()


class IngestServer:
    def __init__(self, config: IngestConfig, secret: SecretStr, sink: MentionSink, *,
                 author_key: SecretStr | None = None) -> None:
        self.config = config
        self._secret = secret
        self.sink = sink
        self.pseudonymise = Pseudonymiser(author_key)
        # Waiting for Kafka's acknowledgement blocks: it happens in this thread, one request at a time.
        self._producer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="earful-ingest")

    def app(self) -> web.Application:
        # aiohttp refuses larger bodies itself (413), also when no Content-Length is sent.
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post(self.config.path, self.handle)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/schema", self.schema)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        self._producer_thread.shutdown(wait=True)

    async def health(self, _: web.Request) -> web.Response:
        return _answer(200, {"status": "ok"})

    async def schema(self, _: web.Request) -> web.Response:
        schema = Mention.model_json_schema()
        # Here ``id`` may be left out: it is derived from source and native_id.
        schema["required"] = [name for name in schema.get("required", []) if name != "id"]
        return _answer(200, schema)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            self._authenticate(request, body)
            mentions = self._parse(body)
            _fits_kafka(mentions)
        except BadRequest as exc:
            answer: dict[str, Any] = {"error": exc.error}
            if exc.details:
                answer["details"] = exc.details
            return _answer(exc.status, answer)
        try:
            await asyncio.get_running_loop().run_in_executor(self._producer_thread, self._produce, mentions)
        except Exception as exc:  # noqa: BLE001 - whatever Kafka said, the pusher must send again
            log.error("ingest: Kafka did not acknowledge %d mentions: %s", len(mentions), exc)
            return _answer(503, {"error": "Kafka did not acknowledge the mentions; send the same request again"})
        return _answer(202, {"accepted": len(mentions), "ids": [m.id for m in mentions]})

    def _produce(self, mentions: list[Mention]) -> None:
        # Waits on this request's records only: the answer vouches for nothing else.
        self.sink.send_mentions(mentions).wait()

    async def _body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(413, f"body of {request.content_length} bytes is over the {limit}-byte limit")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(413, f"body is over the {limit}-byte limit") from None

    def _authenticate(self, request: web.Request, body: bytes) -> None:
        expected = self._secret.get_secret_value().encode()
        given_sig = request.headers.get(self.config.signature_header)
        auth = request.headers.get("Authorization", "")
        if given_sig:
            timestamp = self._timestamp(request)
            signed = "the body" if timestamp is None else f"'<{self.config.timestamp_header}>.<body>'"
            if not hmac.compare_digest(given_sig.strip().encode(),
                                       signature(self._secret, body, timestamp).encode()):
                raise BadRequest(403, f"bad {self.config.signature_header}: expected sha256=<hex HMAC-SHA256 "
                                      f"of {signed} keyed by the shared secret>")
            return
        if auth.lower().startswith("bearer "):
            if not hmac.compare_digest(auth[7:].strip().encode(), expected):
                raise BadRequest(403, "wrong bearer token")
            return
        raise BadRequest(401, f"authentication required: 'Authorization: Bearer <secret>' "
                              f"or '{self.config.signature_header}: sha256=<hmac>'")

    def _timestamp(self, request: web.Request) -> str | None:
        """The signed timestamp, checked against the clock; None when absent and allowed."""
        header = self.config.timestamp_header
        given = request.headers.get(header)
        if given is None:
            if self.config.require_timestamp:
                raise BadRequest(401, f"{header} required: sign '<unix seconds>.<body>' and send the seconds")
            return None
        given = given.strip()
        if not given.isdigit():
            raise BadRequest(403, f"bad {header}: expected whole unix seconds")
        skew = abs(time.time() - int(given))
        if skew > self.config.max_clock_skew_seconds:
            raise BadRequest(403, f"{header} is {skew:.0f} s from the server's clock (at most "
                                  f"{self.config.max_clock_skew_seconds:.0f} s): sign again and resend")
        return given

    def _parse(self, body: bytes) -> list[Mention]:
        try:
            loaded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(400, f"body is not valid JSON: {exc}") from None
        items = loaded if isinstance(loaded, list) else [loaded]
        if not items:
            raise BadRequest(400, "no mentions: send a mention object or a non-empty array of them")
        if len(items) > self.config.max_mentions:
            raise BadRequest(413, f"{len(items)} mentions in one request; at most {self.config.max_mentions}")
        mentions: list[Mention] = []
        problems: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(400, f"item {index} is a {type(item).__name__}, not a mention object")
            try:
                mentions.append(self._mention(item))
            except ValidationError as exc:
                problems.extend({"index": index, "field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]}
                                for e in exc.errors(include_input=False, include_url=False))
            except ValueError as exc:
                problems.append({"index": index, "field": None, "error": str(exc)})
        if problems:
            raise BadRequest(422, "mentions do not match the Mention schema; nothing was accepted", problems)
        return mentions

    def _mention(self, item: dict[str, Any]) -> Mention:
        fields = dict(item)
        given_id = fields.pop("id", None)
        source, native_id = fields.pop("source", None), fields.pop("native_id", None)
        if not isinstance(source, str) or not source or native_id in (None, ""):
            raise ValueError("'source' and 'native_id' are required")
        allowed = self.config.allowed_sources
        if allowed and source not in allowed:
            raise ValueError(f"source {source!r} is not accepted here (allowed: {', '.join(allowed)})")
        if given_id is not None and given_id != mention_id(source, str(native_id)):
            raise ValueError("'id' does not match source and native_id; leave it out to have it derived")
        if fields.get("author"):
            fields["author"] = self.pseudonymise(str(fields["author"]))
        return Mention.build(source=source, native_id=str(native_id), **fields)

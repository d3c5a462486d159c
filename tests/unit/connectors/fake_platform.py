"""A real HTTP server on 127.0.0.1 (ephemeral port) serving recorded platform responses.

Routes answer from a queue of replies (the last one repeats), and every request
is kept, so a test can check which cursor the connector sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "connectors"


def fixture(platform: str, name: str) -> Any:
    path = FIXTURES / platform / name
    return json.loads(path.read_text()) if path.suffix == ".json" else path.read_bytes()


@dataclass
class Reply:
    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def response(self) -> web.Response:
        if isinstance(self.body, bytes | str):
            data = self.body.encode() if isinstance(self.body, str) else self.body
        else:
            data = json.dumps(self.body).encode()
        return web.Response(status=self.status, body=data, headers=self.headers,
                            content_type=self.content_type)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class FakePlatform:
    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[Seen] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/")).rstrip("/")

    def on(self, path: str, *replies: Reply) -> None:
        self.routes[path] = list(replies)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(Seen(request.method, request.path, dict(request.query),
                                  dict(request.headers), await request.read()))
        queue = self.routes.get(request.path)
        if not queue:
            return web.json_response({"error": f"no route for {request.path}"}, status=404)
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        return reply.response()

    async def __aenter__(self) -> FakePlatform:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()

"""A proxy in front of the search server that can refuse some requests for a while, as a
cluster does when it is overloaded (503, 429) or when the worker's API key has expired (401)."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class FaultyProxy:
    """Forwards HTTP to the search server; while ``refuse`` is a status, the requests whose path
    holds ``refuse_paths`` (by default the bulk requests) get it."""

    def __init__(self, upstream: str, refuse_paths: str = "_bulk") -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 9200
        self.refuse_paths = refuse_paths
        self.refuse: int | None = None
        #: answer bulk requests with a 200 that is no bulk response (a broken gateway)
        self.garble = False
        self.refused = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    status = proxy.refuse if proxy.refuse_paths in self.path else None
                    if status is not None:
                        proxy.refused += 1
                    elif proxy.garble and "_bulk" in self.path:
                        proxy.refused += 1
                        status = 200
                if status is not None:
                    payload = (b'{"took":1}' if status == 200 else
                               b'{"error":{"type":"refused_by_test","reason":"bulk refused"},"status":%d}' % status)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("X-Elastic-Product", "Elasticsearch")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815 - http.server API

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def refused_so_far(self) -> int:
        with self.lock:
            return self.refused

    def set_refuse(self, status: int | None) -> None:
        with self.lock:
            self.refuse = status

    def set_garble(self, garble: bool) -> None:
        with self.lock:
            self.garble = garble

    def __enter__(self) -> FaultyProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()

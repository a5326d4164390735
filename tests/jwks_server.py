"""A JWKS endpoint on 127.0.0.1 that counts its fetches and can rotate, go down, or serve garbage on demand."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["JwksServer", "serving_jwks"]


class JwksServer:
    """The document it serves (``publish``), how often it was fetched (``fetches``), and whether it answers."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.fetches = 0
        self.down = False
        self.redirect: str | None = None
        self.url = ""
        self._lock = threading.Lock()

    def publish(self, *documents: dict[str, Any]) -> None:
        """Serve the union of the keys of ``documents``."""
        self.body = json.dumps({"keys": [key for document in documents for key in document["keys"]]}).encode()

    def count(self) -> int:
        with self._lock:
            return self.fetches

    def _fetched(self) -> None:
        with self._lock:
            self.fetches += 1


@contextmanager
def serving_jwks() -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state._fetched()
            if state.redirect is not None:
                self.send_response(302)
                self.send_header("Location", state.redirect)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if state.down:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()

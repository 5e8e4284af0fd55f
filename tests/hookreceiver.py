"""A small webhook receiver on loopback for tests: answers each POST with the next planned status."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int


class Receiver:
    """Records every request; answers with `statuses` in turn, then 200. `redirect_to` sets Location."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None, redirect_to: str | None = None):
        self.statuses = list(statuses or [])
        self.redirect_to = redirect_to
        self.received: list[Received] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server hook name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if receiver.redirect_to:
                    self.send_header("Location", receiver.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver.arrived:
                    receiver.received.append(Received(dict(self.headers), body, time.monotonic(), status))
                    receiver.arrived.notify_all()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 300.0) -> list[Received]:
        """Block until `count` requests arrived (or raise), then return them all."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.received)} of {count} requests arrived")
                self.arrived.wait(left)
            return list(self.received)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

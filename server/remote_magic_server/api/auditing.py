"""Every HTTP request goes to the audit log: who (from the token), method, path and status.

A pure ASGI middleware, so long-polls and uploads pass through untouched. The query string and the
body are not logged here; the routes that carry a spec (jobs, describe) log it with their decision.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit import AuditLog
from ..jobs.store import Store


class AuditMiddleware:
    def __init__(self, app: ASGIApp, audit: AuditLog, store: Store):
        self.app = app
        self.audit = audit
        self.store = store

    def _user(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                found = self.store.lookup_token(token.strip()) if scheme.lower() == "bearer" else None
                return found[0] if found else "(invalid token)"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, int] = {}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            self.audit.record(
                "request",
                self._user(scope),
                method=scope["method"],
                path=scope["path"][:300],
                status=status.get("code"),
            )

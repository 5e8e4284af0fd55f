"""Every HTTP request goes to the audit log: who (from the token), method, path and status.

A pure ASGI middleware, so long-polls and uploads pass through untouched. The query string and the
body are not logged here; the routes that carry a spec (jobs, describe) log it with their decision.
Who made the request is what authentication (api/auth.py) left in the request's state: the user and
the token's id (or "jupyterhub").
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..audit import AuditLog


class AuditMiddleware:
    def __init__(self, app: ASGIApp, audit: AuditLog):
        self.app = app
        self.audit = audit

    @staticmethod
    def _who(scope: Scope) -> tuple[str | None, str | None]:
        principal = scope.get("state", {}).get("principal")
        if principal is not None:
            return principal.user, principal.via
        sent = any(name == b"authorization" for name, _ in scope.get("headers", ()))
        return ("(invalid token)" if sent else None), None

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
            user, via = self._who(scope)
            self.audit.record(
                "request",
                user,
                via=via,
                method=scope["method"],
                path=scope["path"][:300],
                status=status.get("code"),
            )

"""Every HTTP request goes to the audit log: who (from the token), method, path and status, and for a
refused request its registered error code, so the owner sees why (`audit --kind request`). The code is
read from the response's error body and kept only if it is a registered code (`remote_magic.codes`):
a fixed word, never the message, which may quote the analyst's input. The server log gets the same
code in a `request_refused` event.

A pure ASGI middleware, so long-polls and uploads pass through untouched. The query string and the
body are not logged here; the routes that carry a spec (jobs, describe) log it with their decision.
Who made the request is what authentication (api/auth.py) left in the request's state: the user and
the token's id (or "jupyterhub").
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remote_magic.contract.codes import CODES

from ..audit import AuditLog

log = logging.getLogger("remote_magic_server.api")


def _code(body: bytes) -> str | None:
    """The registered error code of an error body (`{"error": {"code": ...}}`), else None."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, TypeError, KeyError):
        return None
    return code if isinstance(code, str) and code in CODES else None


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
        refused: dict[str, str] = {}

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif (
                message["type"] == "http.response.body"
                and status.get("code", 0) >= 400
                and not refused
                and not message.get("more_body", False)
            ):
                code = _code(message.get("body", b""))
                if code:
                    refused["code"] = code
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            user, via = self._who(scope)
            path = scope["path"][:300]
            self.audit.record(
                "request",
                user,
                via=via,
                method=scope["method"],
                path=path,
                status=status.get("code"),
                **refused,
            )
            if refused:
                where = {"method": scope["method"], "path": path, "status": status.get("code"), "user": user}
                log.info("request_refused", extra={**where, **refused})

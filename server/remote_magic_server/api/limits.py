"""Refuse an oversized request body with 413 before it is read, not after it is buffered.

A declared Content-Length above the limit is answered at once; a body without one (chunked) is counted
as it arrives and stopped at the limit. The limit is the model limit plus room for the spec and the
multipart framing; the submit route still checks the model part against the model limit exactly.
(FastAPI's own `max_body_size` answers a declared oversize length in plain text, not in our JSON error
shape, hence this middleware.)
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

FORM_OVERHEAD_BYTES = 2**20


class BodyLimit:
    """ASGI middleware capping the bytes of any request body at `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            message = f"the request is larger than {self.max_bytes // 2**20} MiB"
            response = error_response("payload_too_large", message, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413)
            return message

        await self.app(scope, counted, send)

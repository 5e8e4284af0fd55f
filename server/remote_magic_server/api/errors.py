"""One place that turns every failure into `{"error": {"code", "message"}}` with a fixed message.

A `Refusal` carries a registered code (its HTTP status is listed once, in `remote_magic.codes`) and a
message written for the user; FastAPI's own errors map to registered codes with fixed messages; anything
else is `internal_error`, with its traceback in the server log only. Request-validation errors are
described by field location only, never by the value sent.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from remote_magic.contract.codes import CODES, Refusal
from remote_magic.contract.wire import ErrorBody, first_error

log = logging.getLogger("remote_magic_server.api")

_HTTP_CODES = {
    400: ("bad_request", "the request could not be parsed"),
    401: ("unauthorized", "a bearer token is required"),
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "this method is not allowed here"),
    413: ("payload_too_large", "the request is too large"),
}

ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": desc}
    for status, desc in {
        400: "Malformed request.",
        401: "Missing or invalid token.",
        403: "Not allowed: a model that is not released.",
        404: "Unknown resource, or one this token may not see.",
        409: "The job has not finished yet.",
        413: "Payload too large.",
        422: "The request is well-formed but refused (spec, model, parameters or disclosure rules).",
        429: "Too many queued jobs for this user; retry after the `Retry-After` seconds.",
        500: "Internal error (details only in the server log).",
        503: "JupyterHub, which vouches for Hub tokens, did not answer.",
    }.items()
}

_LOCATIONS = ("body", "query", "path", "header")


def error_response(
    code: str, message: str, headers: dict[str, str] | None = None, status: int | None = None
) -> JSONResponse:
    """The one error shape of the API (`ErrorBody`), so clients parse every failure the same way."""
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status or CODES[code].status,
        headers=headers,
    )


def install(app: FastAPI) -> None:
    """Route every failure, FastAPI's own included, through `error_response` with a fixed message."""

    @app.exception_handler(Refusal)
    async def _refusal(request: Request, exc: Refusal) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = f"invalid value for {first_error(exc.errors(), 'request', _LOCATIONS)}"
        return error_response("invalid_request", message[:300])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, message = _HTTP_CODES.get(exc.status_code, ("http_error", "the request failed"))
        return error_response(code, message, getattr(exc, "headers", None), status=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response("internal_error", "the server failed; the details are in its log")

"""Bearer-token authentication: a token names a user and the datasets it grants.

Our own tokens (`rm_...`) are looked up in the store on every request, so a revoked or expired one is
refused at once. Any other bearer token goes to JupyterHub when the config has a `[jupyterhub]`
section (api/hub.py). The principal is left in the request's state for the audit log.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..jobs.store import TOKEN_PREFIX, Store
from .errors import ApiError

_bearer = HTTPBearer(
    auto_error=False,
    description="A token issued by `remote-magic-server token create`, or a JupyterHub API token.",
)
LAST_USED_EVERY_S = 60.0


@dataclass(frozen=True)
class Principal:
    user: str
    datasets: list[str]
    via: str = ""  # the token's id, or "jupyterhub"


class LastUsed:
    """Records a token's last use at most once a minute, so a status poll does not write every time."""

    def __init__(self, store: Store):
        self.store = store
        self._marked: dict[str, float] = {}

    async def mark(self, token_id: str) -> None:
        now = time.monotonic()
        if now - self._marked.get(token_id, -LAST_USED_EVERY_S) >= LAST_USED_EVERY_S:
            self._marked[token_id] = now
            await asyncio.to_thread(self.store.mark_token_used, token_id)


async def _from_store(request: Request, secret: str) -> Principal:
    row = request.app.state.store.lookup_token(secret)
    if row is None:
        raise ApiError(401, "unauthorized", "the token is not valid")
    state = row.state()
    if state == "revoked":
        raise ApiError(401, "unauthorized", "this token was revoked; ask the data owner for a new one")
    if state == "expired":
        expired = f"this token expired on {str(row.expires_at)[:10]}; ask the data owner for a new one"
        raise ApiError(401, "unauthorized", expired)
    await request.app.state.last_used.mark(row.id)
    return Principal(user=row.user, datasets=row.datasets, via=row.id)


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "a bearer token is required")
    secret = credentials.credentials
    hub = request.app.state.hub
    if hub is not None and not secret.startswith(TOKEN_PREFIX):
        principal = await hub.principal(secret)
    else:
        principal = await _from_store(request, secret)
    request.state.principal = principal
    return principal

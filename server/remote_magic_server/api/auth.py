"""Bearer-token authentication: a token names a user and the datasets it grants.

Our own tokens (`rm_...`) are looked up in the store on every request, so a revoked or expired one is
refused at once. Any other bearer token goes to JupyterHub when the config has a `[jupyterhub]`
section (api/hub.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from remote_magic.contract.codes import Refusal

from ..jobs.store import DATASETS_SCOPE, METRICS_SCOPE, TOKEN_PREFIX, Store
from .principal import Principal

if TYPE_CHECKING:
    from .hub import HubSignIn

bearer = HTTPBearer(
    auto_error=False,
    description="A token issued by `remote-magic-server token create`, or a JupyterHub API token.",
)
LAST_USED_EVERY_S = 60.0


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


def token_principal(store: Store, secret: str, scope: str = DATASETS_SCOPE) -> tuple[Principal, str]:
    """The user one of our tokens names, and the token's id; Refusal('unauthorized') for an unknown,
    revoked or expired token, Refusal('forbidden') for a token of another scope (a scraper's token
    reads /metrics only; an analyst's token does not read /metrics)."""
    row = store.lookup_token(secret)
    if row is None:
        raise Refusal(
            "unauthorized",
            "the token is not valid (mistyped, or replaced by a newer one); ask the data owner for a new one",
        )
    state = row.state()
    if state == "revoked":
        raise Refusal("unauthorized", "this token was revoked; ask the data owner for a new one")
    if state == "expired":
        expired = f"this token expired on {str(row.expires_at)[:10]}; ask the data owner for a new one"
        raise Refusal("unauthorized", expired)
    if row.scope != scope:
        if row.scope == METRICS_SCOPE:
            raise Refusal(
                "forbidden", "this token reads /metrics only; ask the data owner for an analyst's token"
            )
        raise Refusal(
            "forbidden",
            "/metrics needs a metrics token (`token create --metrics`); an analyst's token does not read it",
        )
    return Principal(user=row.user, datasets=row.datasets, via=row.id), row.id


async def authenticate(
    store: Store,
    last_used: LastUsed,
    hub: HubSignIn | None,
    credentials: HTTPAuthorizationCredentials | None,
) -> Principal:
    """The principal of a bearer token: ours (looked up now), else the Hub's if a Hub is configured."""
    if credentials is None or not credentials.credentials:
        raise Refusal("unauthorized", "a bearer token is required")
    secret = credentials.credentials
    if hub is not None and not secret.startswith(TOKEN_PREFIX):
        return await hub.principal(secret)
    principal, token_id = token_principal(store, secret)
    await last_used.mark(token_id)
    return principal


async def metrics_reader(store: Store, last_used: LastUsed, authorization: str | None) -> Principal:
    """Who scrapes /metrics: a bearer token of ours with the metrics scope (`token create --metrics`).
    Hub tokens are not asked about: a scraper is the owner's, not a Hub user's."""
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Refusal("unauthorized", "/metrics needs a bearer token made by `token create --metrics`")
    principal, token_id = await asyncio.to_thread(token_principal, store, secret.strip(), METRICS_SCOPE)
    await last_used.mark(token_id)
    return principal

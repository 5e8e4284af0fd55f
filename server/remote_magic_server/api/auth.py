"""Bearer-token authentication: a token names a user and the datasets it grants."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from remote_magic.codes import Refusal

from ..jobs.store import Store

bearer = HTTPBearer(auto_error=False, description="A token issued by `remote-magic-server token`.")


@dataclass(frozen=True)
class Principal:
    user: str
    datasets: list[str]


def authenticate(store: Store, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The user a bearer token names; raise Refusal('unauthorized') for a missing or unknown token."""
    if credentials is None or not credentials.credentials:
        raise Refusal("unauthorized", "a bearer token is required")
    found = store.lookup_token(credentials.credentials)
    if found is None:
        raise Refusal("unauthorized", "the token is not valid")
    user, datasets = found
    return Principal(user=user, datasets=datasets)

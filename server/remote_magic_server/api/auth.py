"""Bearer-token authentication: a token names a user and the datasets it grants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="A token issued by `remote-magic-server token`.")


@dataclass(frozen=True)
class Principal:
    user: str
    datasets: list[str]


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "a bearer token is required")
    found = request.app.state.store.lookup_token(credentials.credentials)
    if found is None:
        raise ApiError(401, "unauthorized", "the token is not valid")
    user, datasets = found
    return Principal(user=user, datasets=datasets)

"""JupyterHub sign-in: analysts in a Hub use the API token their kernel already has.

The server is a Hub service. For a bearer token that is not one of ours it asks the Hub who owns it
(`jupyterhub.services.auth.HubAuth.user_for_token`: `GET /hub/api/user` with that token), then reads
the user's groups with its own service token (a kernel's token may not see them), and grants the union
of the datasets the config gives that user and those groups. Hub users act as `hub:NAME`, so a Hub
account can never stand in for a token user of the same name. A Hub that does not answer within
`timeout_s` gives 503 `hub_unavailable` at once: a request never hangs on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import quote

import requests

from remote_magic.contract.codes import Refusal

from ..config.settings import ConfigError, JupyterHubSection
from .principal import Principal

log = logging.getLogger("remote_magic_server.api")

USER_PREFIX = "hub:"
_UNAVAILABLE = "JupyterHub did not answer, so Hub tokens cannot be checked now; try again shortly"


class HubSignIn:
    """Turns a JupyterHub API token into a principal with the datasets the config grants."""

    def __init__(self, config: JupyterHubSection):
        from jupyterhub.services.auth import HubAuth

        service_token = os.environ.get(config.api_token_env, "")
        if not service_token:
            raise ConfigError(
                f"[jupyterhub] needs this service's Hub API token in the environment variable "
                f"{config.api_token_env}"
            )
        self.config = config
        self.api_url = config.api_url.rstrip("/")
        self._service_token = service_token
        self._auth = HubAuth(api_url=self.api_url, api_token=service_token, cache_max_age=0)

    async def principal(self, token: str) -> Principal:
        from tornado.web import HTTPError

        try:
            model = await asyncio.wait_for(
                self._auth.user_for_token(token, use_cache=False, sync=False), self.config.timeout_s
            )
            groups = await self._groups(model["name"]) if model and model.get("kind") == "user" else []
        except (asyncio.TimeoutError, HTTPError, requests.RequestException, ValueError, KeyError) as exc:
            log.warning("hub_unavailable", extra={"reason": type(exc).__name__})
            raise Refusal("hub_unavailable", _UNAVAILABLE) from None
        if not model or model.get("kind") != "user":
            raise Refusal("unauthorized", "JupyterHub does not recognise this token")
        name = str(model["name"])
        datasets = set(self.config.users.get(name, []))
        for group in groups:
            datasets.update(self.config.groups.get(group, []))
        if not datasets:
            raise Refusal("forbidden", "your JupyterHub account is granted no dataset here; ask the owner")
        return Principal(user=USER_PREFIX + name, datasets=sorted(datasets), via="jupyterhub")

    async def _groups(self, name: str) -> list[str]:
        """The user's groups, read with the service's own token (scope read:users:groups)."""
        response = await asyncio.to_thread(
            requests.get,
            f"{self.api_url}/users/{quote(name, safe='')}",
            headers={"Authorization": f"token {self._service_token}"},
            timeout=self.config.timeout_s,
        )
        if response.status_code != 200:
            log.warning("hub_groups_refused", extra={"status": response.status_code})
            raise Refusal(
                "hub_unavailable",
                "this server may not read your JupyterHub groups; its Hub service needs the scope "
                "read:users:groups (tell the data owner)",
            )
        return [str(g) for g in response.json().get("groups", [])]

"""Who a request acts for: a user and the datasets granted to them, whichever way they signed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    user: str
    datasets: list[str]
    via: str = ""  # the token's id, or "jupyterhub"

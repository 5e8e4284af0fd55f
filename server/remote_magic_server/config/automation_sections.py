"""The configuration tables of the automation: `[registry]`, `[webhooks]`, `[mlflow]`, `[automation]`.

Apart from settings.py so the server's core configuration stays short; like every table there, each
forbids unknown keys.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .sources import parse_duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegistrySection(_Strict):
    keep_unregistered: str = Field(
        default="30d", description="How long a job's model is kept when it is not registered, e.g. '30d'."
    )
    grants: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Model name -> other users who may see, continue and evaluate its versions.",
    )

    @field_validator("keep_unregistered")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class WebhooksSection(_Strict):
    allow: list[str] = Field(
        default_factory=list,
        description="Targets subscriptions may name, as 'scheme://host:port'; nothing else is ever called.",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    max_attempts: int = Field(default=12, ge=1, le=50)
    backoff_s: float = Field(default=2.0, gt=0, description="Wait before the 2nd attempt; doubles each time.")
    max_backoff_s: float = Field(default=3600.0, gt=0)

    @field_validator("allow")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:

        for target in value:
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
                raise ValueError(f"webhook target {target!r}: write it as 'scheme://host:port'")
        return value


class MlflowSection(_Strict):
    enabled: bool = Field(default=False, description="Export released jobs and registered versions.")
    tracking_uri: str = Field(
        default="", description="A tracking server's URL, or '' for an embedded sqlite:/// file in data_dir."
    )
    experiment: str = Field(default="remote-magic", min_length=1, max_length=200)


class AutomationSection(_Strict):
    poll_s: float = Field(
        default=5.0, gt=0, le=3600, description="How often recipes' triggers and the outbox are checked."
    )

"""Server configuration: one TOML file, validated once at start-up.

A typo in a data owner's config must stop the server with a clear message rather than silently fall back
to a default, so every table forbids unknown keys.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from remote_magic.wire import ModelBounds, PolicyInEffect

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


SIGNIFICANT_DIGITS = 4
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in `"90s"`, `"30m"`, `"1h"` or `"7d"`; anything else is a ValueError."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like '90s', '30m', '1h' or '7d'")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Policy(_Strict):
    """Disclosure policy numbers; datasets may tighten them."""

    min_count: int = Field(default=10, ge=3)
    round_to: int = Field(default=5, ge=1)
    min_rows: int = Field(default=100, ge=10)
    min_class_rows: int = Field(default=10, ge=3)
    max_n_estimators: int = Field(default=2000, ge=1)
    max_depth: int = Field(default=12, ge=1)
    max_bin: int = Field(default=1024, ge=2)
    max_threads: int = Field(default=0, ge=0, description="0 means the worker's share of the cores.")
    job_timeout_s: int = Field(default=3600, ge=1)
    worker_memory_mb: int = Field(default=8192, ge=1024)
    max_categories: int = Field(default=40, ge=1, description="Category frequencies shown per column.")
    min_leaf_rows: int = Field(
        default=10, ge=5, description="Training rows every leaf of a released model holds."
    )
    dp_epsilon: float = Field(
        default=1.0, gt=0, le=5, description="Epsilon spent by one DP describe release."
    )
    dp_epsilon_cap: float = Field(default=10.0, gt=0, description="Total epsilon per user and dataset.")

    def in_effect(self) -> PolicyInEffect:
        """The rules a client is told with every answer, so it says what they were."""
        return PolicyInEffect(
            min_count=self.min_count,
            round_to=self.round_to,
            significant_digits=SIGNIFICANT_DIGITS,
            min_rows=self.min_rows,
            min_class_rows=self.min_class_rows,
        )


class DatasetConfig(_Strict):
    path: Path
    description: str = ""
    id_column: str
    label_columns: list[str] = Field(min_length=1)
    exclude_columns: list[str] = Field(default_factory=list)
    policy: dict[str, int | float] = Field(default_factory=dict)
    dp: bool = Field(default=False, description="Describe releases noisy counts (OpenDP) under a budget.")
    allow_model_release: bool = Field(default=False, description="Trained models may leave after approval.")
    allow_custom_code: bool = Field(
        default=False,
        description="Accept payloads with notebook-defined code, each held until the owner approves it.",
    )
    mock_path: Path | None = Field(
        default=None,
        description="Parquet or CSV file of mock rows to publish for dry runs; default: synthesised from "
        "the column types alone.",
    )

    @field_validator("policy")
    @classmethod
    def _known_policy_keys(cls, value: dict[str, int | float]) -> dict[str, int | float]:
        unknown = set(value) - set(Policy.model_fields)
        if unknown:
            raise ValueError(f"unknown policy keys: {sorted(unknown)}")
        return value


class ServerSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    data_dir: Path = Path("remote-magic-data")
    workers: int = Field(default=0, ge=0, description="0 means cores - 1, at least 1.")
    max_payload_mb: int = Field(default=64, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    sandbox_uid: int = Field(default=65534, ge=1, description="The uid workers run as when serving as root.")
    sandbox_gid: int = Field(default=65534, ge=1, description="The gid workers run as when serving as root.")
    max_queued_per_user: int = Field(
        default=20, ge=1, description="Queued jobs one user may have; more are refused with 429."
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long running jobs may take to finish before re-queueing.",
    )


class ExecutorSection(_Strict):
    kind: Literal["local"] = Field(
        default="local", description="Where tasks run: 'local', one sandboxed process per task."
    )


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
        from urllib.parse import urlsplit

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


class Settings(_Strict):
    server: ServerSection = Field(default_factory=ServerSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    webhooks: WebhooksSection = Field(default_factory=WebhooksSection)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    automation: AutomationSection = Field(default_factory=AutomationSection)
    policy: Policy = Field(default_factory=Policy)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)

    def policy_for(self, dataset: str) -> Policy:
        """The server policy with the dataset's overrides applied; overrides may only tighten."""
        base = self.policy.model_dump()
        for key, value in self.datasets[dataset].policy.items():
            smaller_is_tighter = key.startswith(("max_", "dp_")) or key in (
                "job_timeout_s",
                "worker_memory_mb",
            )
            base[key] = min(base[key], value) if smaller_is_tighter else max(base[key], value)
        return Policy(**base)

    def bounds_for(self, dataset: str) -> ModelBounds:
        """The hyperparameter bounds of a dataset's models (the dry run checks against them too)."""
        policy = self.policy_for(dataset)
        return ModelBounds(
            max_n_estimators=policy.max_n_estimators,
            max_depth=policy.max_depth,
            max_bin=policy.max_bin,
            max_threads=self.threads_per_job(policy),
        )

    @property
    def worker_count(self) -> int:
        return self.server.workers or max(1, (os.cpu_count() or 2) - 1)

    def threads_per_job(self, policy: Policy | None = None) -> int:
        """A worker's share of the cores, capped by the policy's `max_threads`."""
        share = max(1, (os.cpu_count() or 1) // self.worker_count)
        cap = (policy or self.policy).max_threads
        return min(share, cap) if cap else share

    @property
    def db_path(self) -> Path:
        return self.server.data_dir / "store.sqlite"

    @property
    def jobs_dir(self) -> Path:
        return self.server.data_dir / "jobs"

    @property
    def audit_path(self) -> Path:
        return self.server.data_dir / "audit.log"

    @property
    def ledger_path(self) -> Path:
        return self.server.data_dir / "ledger.sqlite"

    @property
    def registry_path(self) -> Path:
        return self.server.data_dir / "registry.sqlite"

    @property
    def automation_path(self) -> Path:
        """Recipes, webhook subscriptions and the outbox of deliveries and exports."""
        return self.server.data_dir / "automation.sqlite"


class ConfigError(Exception):
    """The configuration file is missing or invalid."""


def load_settings(path: Path) -> Settings:
    """Read and validate a TOML config; relative paths are resolved against the file's folder."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return resolve_paths(settings, Path(path).resolve().parent)


def resolve_paths(settings: Settings, base: Path) -> Settings:
    """Make the data directory and dataset paths absolute, relative to `base`."""
    settings.server.data_dir = (base / settings.server.data_dir).resolve()
    for ds in settings.datasets.values():
        ds.path = (base / ds.path).resolve() if not ds.path.is_absolute() else ds.path
        if ds.mock_path is not None and not ds.mock_path.is_absolute():
            ds.mock_path = (base / ds.mock_path).resolve()
        if ds.id_column in ds.label_columns:
            raise ConfigError(f"dataset at {ds.path}: the id column cannot be a label")
    return settings

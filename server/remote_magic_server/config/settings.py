"""Server configuration: one TOML file, validated once at start-up.

A typo in a data owner's config must stop the server with a clear message rather than silently fall back
to a default, so every table forbids unknown keys.

Why it is long: every key a data owner may write is declared here once, with its default, bounds and
the description `doctor` and the docs show; the
automation's tables live apart, in automation_sections.py.
"""

from __future__ import annotations

import math
import os
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from remote_magic.contract.wire import (
    IDENT,
    ClassName,
    ModelBounds,
    PolicyInEffect,
    PrivacyMode,
    did_you_mean,
    is_dp,
)

from .automation_sections import (
    AutomationSection,
    MlflowSection,
    RegistrySection,
    WebhooksSection,
)
from .sources import ParquetSourceConfig, SourceConfig, not_csv, parse_duration, resolve_source_paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


_DATASET_NAME = re.compile(IDENT)
SIGNIFICANT_DIGITS = 4
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_DECLARED_LEVELS = 254  # the DP trainer codes a text column in one byte


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
    devices: list[Literal["cpu", "cuda"]] = Field(
        default_factory=lambda: ["cpu"],
        description='Devices a model may train on: ["cpu", "cuda"] lets jobs set device="cuda" on a '
        "machine with an NVIDIA GPU (server-wide only).",
    )
    staging_mb: int = Field(
        default=2048,
        ge=16,
        description="Admitted feature data held in memory (at most a quarter of worker_memory_mb); "
        "past it, rows spill to the job folder and train from an external-memory matrix.",
    )
    max_categories: int = Field(default=40, ge=1, description="Category frequencies shown per column.")
    min_leaf_rows: int = Field(
        default=10, ge=5, description="Training rows every leaf of a released model holds."
    )
    privacy: PrivacyMode = Field(
        default="dp",
        description="dp: models are trained by the DP trainer and every released number is drawn by an "
        "OpenDP measurement under a budget; dp_eval_only: the same DP releases of models trained without "
        "DP (weaker: training rows are protected by a leaf floor only); rules: suppression and rounding "
        "only (weaker: it does not resist attacker-chosen models).",
    )
    dp_rho_job: float = Field(
        default=0.01, gt=0, le=0.5, description="zCDP cost of a job's default releases."
    )
    dp_rho_train: float = Field(
        default=0.05, gt=0, le=0.5, description="zCDP cost of the DP trainer in a train job (mode dp)."
    )
    dp_rho_describe: float = Field(default=0.002, gt=0, le=0.5, description="zCDP cost of one describe.")
    dp_rho_describe_sketch: float = Field(
        default=0.002,
        gt=0,
        le=0.5,
        description="Extra cost of a describe that shows a column without a declared range or levels "
        "(its histogram edges and categories come from a DP sketch).",
    )
    dp_rho_confusion: float = Field(
        default=0.002, gt=0, le=0.5, description="Extra cost of the confusion matrix."
    )
    dp_rho_curve: float = Field(
        default=0.003, gt=0, le=0.5, description="Extra cost of an eval learning curve."
    )
    dp_rho_importance: float = Field(
        default=0.002, gt=0, le=0.5, description="Extra cost of a permutation-importance ranking."
    )
    dp_rho_cap: float = Field(
        default=1.0,
        gt=0,
        description="Total zCDP budget per user and dataset (1.0: a one-row label guess "
        "is right with probability at most about 0.76).",
    )
    dp_rho_dataset_cap: float = Field(
        default=0.0, ge=0, description="Total budget of a dataset across all users; 0 means none."
    )
    dp_delta: float = Field(default=1e-6, gt=0, lt=1e-3, description="The delta at which epsilon is shown.")
    dp_rho_catalog: float = Field(
        default=0.0005,
        gt=0,
        le=0.5,
        description="zCDP cost of the catalog's row count of a mode-dp table, drawn once per dataset "
        "version and shown to every user (counted in the dataset's total, not in any user's budget).",
    )

    @property
    def noisy(self) -> bool:
        """Every released number is an OpenDP draw under a budget (modes dp and dp_eval_only)."""
        return is_dp(self.privacy)

    @property
    def trains_privately(self) -> bool:
        """A train job trains with the DP trainer (mode dp)."""
        return self.privacy == "dp"

    @property
    def staging_budget_mb(self) -> int:
        """What a worker may hold of the admitted feature data: the rest of its memory goes to the
        matrices, XGBoost and DuckDB."""
        return min(self.staging_mb, self.worker_memory_mb // 4)

    def in_effect(self) -> PolicyInEffect:
        """The rules a client is told with every answer, so it says what they were."""
        return PolicyInEffect(
            min_count=self.min_count,
            round_to=self.round_to,
            significant_digits=SIGNIFICANT_DIGITS,
            min_rows=self.min_rows,
            min_class_rows=self.min_class_rows,
            privacy=self.privacy,
            rho_per_job=self.dp_rho_job if self.noisy else None,
            rho_cap=self.dp_rho_cap if self.noisy else None,
            rho_train=self.dp_rho_train if self.trains_privately else None,
        )


class DatasetConfig(_Strict):
    path: Path | None = Field(default=None, description="Shorthand for a parquet source at this path.")
    source: SourceConfig | None = Field(
        default=None, description="Where the rows live; see config/sources.py."
    )
    refresh_every: str | None = Field(
        default=None, description="Snapshot the source again this often inside the server, e.g. '1h'."
    )
    description: str = ""
    id_column: str
    label_columns: list[str] = Field(min_length=1)
    exclude_columns: list[str] = Field(default_factory=list)
    policy: dict[str, int | float] = Field(default_factory=dict)
    privacy: PrivacyMode | None = Field(
        default=None, description="This dataset's privacy mode; default: the server's [policy] privacy."
    )
    label_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Per regression label, the range its values are clipped to for DP metrics (RMSE, MAE, "
        "R2) and for DP training; without one, those metrics are not released in mode dp and a regressor "
        "is not trained there.",
    )
    column_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Per numeric feature, a public range (lo, hi) the DP trainer spreads its split "
        "candidates over at no cost; a numeric feature without one gets candidates from a DP sketch paid "
        "from the job's training budget.",
    )
    column_levels: dict[str, list[ClassName]] = Field(
        default_factory=dict,
        description="Per text feature, its public levels (the DP trainer's categories, at no cost); a text "
        "feature without them gets levels selected from noisy counts, paid from the training budget. For a "
        "label, its classes; numbers and true/false may be written bare ([0, 1], [true, false]): they are "
        "read as text, as a spec's `classes` are, and matched against the column as numbers or booleans.",
    )
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

    def undeclared(self, spec: dict, features: list[str] | tuple[str, ...]) -> list[str]:
        """The columns a describe of `spec` shows that the owner declared no range or levels for (features,
        derived columns, the label unless the spec names its classes): in mode dp, if there are any, it
        pays for a sketch with one count for each. From the request and this config, never from the rows."""
        declared = {*self.column_ranges, *self.column_levels}
        shown = [*features, *(spec.get("derive") or {})]
        bare = [c for c in shown if c not in declared]
        label = spec["label"]
        if not (label in {*self.label_ranges, *self.column_levels} or spec.get("classes")):
            bare.append(label)
        return bare

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.source is None):
            raise ValueError("a dataset needs exactly one of `path` and `source`")
        return self

    _parquet = field_validator("path")(not_csv)

    @property
    def source_config(self) -> SourceConfig:
        """Where the rows live; `path = ...` is a parquet source."""
        return self.source or ParquetSourceConfig(path=self.path)

    @field_validator("refresh_every")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def refresh_seconds(self) -> int | None:
        return parse_duration(self.refresh_every) if self.refresh_every else None

    @field_validator("label_ranges", "column_ranges")
    @classmethod
    def _ranges(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in value.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"range of {name!r}: needs finite lo < hi, not ({lo}, {hi})")
        return value

    @field_validator("column_levels")
    @classmethod
    def _levels(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, levels in value.items():
            if not levels or len(set(levels)) != len(levels) or len(levels) > MAX_DECLARED_LEVELS:
                raise ValueError(f"levels of {name!r}: 1 to {MAX_DECLARED_LEVELS} distinct names")
        return value

    @field_validator("policy")
    @classmethod
    def _known_policy_keys(cls, value: dict[str, int | float]) -> dict[str, int | float]:
        unknown = sorted(set(value) - set(Policy.model_fields))
        if unknown:
            raise ValueError(
                f"unknown policy key {unknown[0]!r}{did_you_mean(unknown[0], list(Policy.model_fields))}"
            )
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
    tls_cert: Path | None = Field(default=None, description="PEM certificate (chain): serve HTTPS.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: clients must present a certificate it signed."
    )
    metrics_without_token: bool = Field(
        default=False,
        description="GET /metrics answers any scraper, with no token (default: only a token made by "
        "`token create --metrics`).",
    )


class AuditSection(_Strict):
    syslog: str | None = Field(
        default=None,
        description="Ship each entry's head (sequence number, hash) to syslog: a socket path such as "
        "/dev/log, or HOST:PORT (UDP).",
    )


class JupyterHubSection(_Strict):
    """Sign-in for JupyterHub users: the server asks the Hub who owns a token, then grants datasets."""

    api_url: str = Field(description="The Hub's REST API, e.g. http://127.0.0.1:8081/hub/api.")
    api_token_env: str = Field(
        default="REMOTE_MAGIC_HUB_API_TOKEN",
        description="Environment variable holding this service's Hub API token (scope read:users:groups).",
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="How long to wait for the Hub.")
    users: dict[str, list[str]] = Field(default_factory=dict, description="Hub user -> datasets.")
    groups: dict[str, list[str]] = Field(default_factory=dict, description="Hub group -> datasets.")


class ExecutorSection(_Strict):
    kind: Literal["local", "dask"] = Field(
        default="local",
        description="Where tasks run: 'local', one sandboxed process per task; 'dask', training and "
        "evaluation on a Dask cluster (payloads are still decoded by a local sandboxed worker).",
    )
    scheduler: str = Field(
        default="",
        description="kind = dask: the scheduler's address, tls://HOST:PORT (or tcp:// on loopback).",
    )
    tls_ca_file: Path | None = Field(
        default=None, description="The CA that signed the cluster's certificates."
    )
    tls_cert: Path | None = Field(default=None, description="The server's client certificate (PEM).")
    tls_key: Path | None = Field(default=None, description="The key of that certificate (PEM).")
    partitions: int = Field(default=0, ge=0, description="Partitions per job; 0: one per cluster worker.")
    warm_workers: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Confined workers started ahead of the jobs (forked, DuckDB open, nothing read), each "
        "for one job; 0: a fresh worker per job.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="How long to try to reach the scheduler."
    )
    collective_timeout_s: int = Field(
        default=60, ge=5, description="How long a training worker waits for a lost peer before it gives up."
    )
    start_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a job waits for its training workers to begin together (another job "
        "training on them, a rendezvous that does not complete) before it fails with cluster_busy.",
    )

    @model_validator(mode="after")
    def _a_cluster_needs_an_address(self) -> ExecutorSection:
        if self.kind == "dask" and not self.scheduler:
            raise ValueError("[executor] kind = 'dask' needs scheduler = 'tls://HOST:PORT'")
        tls = (self.tls_ca_file, self.tls_cert, self.tls_key)
        if any(tls) and not all(tls):
            raise ValueError("[executor] TLS needs tls_ca_file, tls_cert and tls_key together")
        if self.scheduler.startswith("tls://") and not all(tls):
            raise ValueError("[executor] a tls:// scheduler needs tls_ca_file, tls_cert and tls_key")
        host = urlsplit(self.scheduler).hostname or ""
        if self.kind == "dask" and not self.scheduler.startswith("tls://") and host not in LOOPBACK:
            raise ValueError(
                "[executor] a scheduler that is not on this machine needs tls:// and certificates"
            )
        return self


class Settings(_Strict):
    server: ServerSection = Field(default_factory=ServerSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    webhooks: WebhooksSection = Field(default_factory=WebhooksSection)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    automation: AutomationSection = Field(default_factory=AutomationSection)
    policy: Policy = Field(default_factory=Policy)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    audit: AuditSection = Field(default_factory=AuditSection)
    jupyterhub: JupyterHubSection | None = None
    # Set by `demo_settings` only, never by a config file: messages name `--demo` where they would name
    # the server's `--config FILE` (a real deployment's analysts must not be told of a demo).
    _demo: bool = PrivateAttr(default=False)

    @property
    def owner_flag(self) -> str:
        """How the data owner's commands find this server's settings: `--demo`, or `--config FILE`."""
        return "--demo" if self._demo else "--config FILE"

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, value: dict[str, DatasetConfig]) -> dict[str, DatasetConfig]:
        for name in value:
            if not _DATASET_NAME.match(name):
                raise ValueError(
                    f"dataset name {name!r}: use letters, digits and '_' (a spec names it; `NAME@N` pins N)"
                )
        return value

    def policy_for(self, dataset: str) -> Policy:
        """The server policy with the dataset's overrides applied; numbers may only tighten, the privacy
        mode is the dataset's own choice."""
        config = self.datasets[dataset]
        base = self.policy.model_dump()
        for key, value in config.policy.items():
            smaller_is_tighter = key.startswith(("max_", "dp_")) or key in (
                "job_timeout_s",
                "worker_memory_mb",
                "staging_mb",
            )
            if key == "dp_rho_dataset_cap" and not base[key]:
                base[key] = value  # 0 is "no cap", which any cap tightens
            else:
                base[key] = min(base[key], value) if smaller_is_tighter else max(base[key], value)
        if config.privacy is not None:
            base["privacy"] = config.privacy
        return Policy(**base)

    def bounds_for(self, dataset: str) -> ModelBounds:
        """The hyperparameter bounds of a dataset's models (the dry run checks against them too)."""
        policy = self.policy_for(dataset)
        return ModelBounds(
            max_n_estimators=policy.max_n_estimators,
            max_depth=policy.max_depth,
            max_bin=policy.max_bin,
            max_threads=self.threads_per_job(policy),
            min_leaf_rows=policy.min_leaf_rows if policy.privacy == "dp_eval_only" else None,
            devices=list(policy.devices),
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
    def snapshots_dir(self) -> Path:
        """Dataset versions: one folder of immutable Parquet snapshots per dataset, and their registry."""
        return self.server.data_dir / "snapshots"

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
        raise ConfigError("\n".join(f"{path}: {line}" for line in config_errors(exc))) from exc
    return resolve_paths(settings, Path(path).resolve().parent)


def config_errors(exc: ValidationError) -> list[str]:
    """One line per mistake, `key.path: what`, an unknown key with the nearest known one: an owner
    fixes the file from these lines, without pydantic's blocks."""
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        where = ".".join(loc) or "the file"
        if error["type"] == "extra_forbidden":
            known = _keys_at(loc[:-1])
            lines.append(f"unknown key {where}{did_you_mean(loc[-1], known) if known else ''}")
        else:
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return lines


def _keys_at(loc: tuple[str, ...]) -> list[str]:
    """The keys the table at `loc` takes (a dataset name or other free key is stepped over, a source's
    `kind` picks its table); empty where that cannot be told."""
    current: Any = Settings
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, list):  # a union of tables: pydantic's loc names the member's `kind`
            current = next((m for m in current if part in get_args(m.model_fields["kind"].annotation)), None)
        elif _is_table(current):
            current = current.model_fields[part].annotation if part in current.model_fields else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    return list(current.model_fields) if _is_table(current) else []


def _is_table(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unwrap(annotation: Any) -> Any:
    """`annotation` without `Annotated` and `None`; a union of tables with a `kind` as a list of them."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
        if all(_is_table(m) and "kind" in m.model_fields for m in members):
            return members
    return annotation


def resolve_paths(settings: Settings, base: Path) -> Settings:
    """Make the data directory and dataset paths absolute, relative to `base`."""
    settings.server.data_dir = (base / settings.server.data_dir).resolve()
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        value = getattr(settings.server, key)
        if value is not None:
            setattr(settings.server, key, (base / value).resolve())
    if (settings.server.tls_cert is None) != (settings.server.tls_key is None):
        raise ConfigError("[server] tls_cert and tls_key go together: give both or neither")
    if settings.server.tls_client_ca is not None and settings.server.tls_cert is None:
        raise ConfigError("[server] tls_client_ca needs tls_cert and tls_key")
    for key in ("tls_ca_file", "tls_cert", "tls_key"):
        value = getattr(settings.executor, key)
        if value is not None:
            setattr(settings.executor, key, (base / value).resolve())
    hub = settings.jupyterhub
    granted = [*(hub.users.values() if hub else ()), *(hub.groups.values() if hub else ())]
    unknown = sorted({name for names in granted for name in names} - set(settings.datasets))
    if unknown:
        raise ConfigError(f"[jupyterhub] grants unknown datasets: {', '.join(unknown)}")
    for name, ds in settings.datasets.items():
        if ds.path is not None and not ds.path.is_absolute():
            ds.path = (base / ds.path).resolve()
        if ds.source is not None:
            resolve_source_paths(ds.source, base)
        if ds.mock_path is not None and not ds.mock_path.is_absolute():
            ds.mock_path = (base / ds.mock_path).resolve()
        if ds.id_column in ds.label_columns:
            raise ConfigError(f"dataset {name!r}: the id column cannot be a label")
    return settings

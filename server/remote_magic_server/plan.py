"""A job's plan: what the intake resolved and decided about a job, stored with it, typed once here.

The intake writes it (for a person's job and a recipe's run alike), the store keeps it as JSON, and the
scheduler, the registry, the status and the automation read its fields. It is trusted data, built by
the server from input checked at the HTTP boundary, so no room validates it again; the store parses it
when it reads a job, and a plan an older server stored still loads: fields it lacked take their
defaults, fields since dropped are ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from remote_magic.contract.automation_wire import RegisterRequest
from remote_magic.contract.specs import Resolved
from remote_magic.contract.wire import ReleaseOptions


class BaseModelRef(BaseModel):
    """The registered version a job continues or evaluates, and the digest of its model file."""

    ref: str
    name: str
    number: int
    job: str
    sha256: str
    dp_release: bool | None = Field(
        default=None,
        description="Whether the version was itself a DP release when the job was accepted: only then is "
        "a DP training on top of it one too (`privacy.model_release.outside_proof`); None: not recorded "
        "(accepted before the intake recorded it), asked of the version's job when needed.",
    )


class JobPlan(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    # the spec resolved against the dataset version's schema (intake/catalog.py)
    features: list[str] = Field(default_factory=list)
    filter_columns: list[str] = Field(default_factory=list)
    derive_columns: list[str] = Field(default_factory=list)
    label_dtype: str = ""
    dataset_version: int | None = None
    snapshot: str | None = Field(default=None, description="None: queued before datasets had versions.")
    # what was asked and what the payload is
    release: ReleaseOptions = Field(default_factory=ReleaseOptions)
    model: str | None = Field(default=None, description="The payload's top-level kind, from its scan.")
    payload_sha256: str | None = None
    custom_code: list[str] | None = Field(default=None, description="Notebook code awaiting approval.")
    approved_sha256: str | None = None
    # the registry
    registration: RegisterRequest | None = Field(default=None, alias="register")
    base_model: BaseModelRef | None = None
    # a recipe's run
    recipe: str | None = None
    trigger: str | None = None

    @classmethod
    def of(cls, resolved: Resolved, dataset_version: int, snapshot: str) -> JobPlan:
        """The plan of a resolved spec on a dataset version (its snapshot file is the job's data)."""
        return cls(
            features=resolved.features,
            filter_columns=resolved.filter_columns,
            derive_columns=resolved.derive_columns,
            label_dtype=resolved.label_dtype,
            dataset_version=dataset_version,
            snapshot=snapshot,
        )

    def resolved(self, derived: list[str], id_column: str) -> Resolved:
        """The resolved spec again, for the staging query."""
        return Resolved(
            features=self.features,
            filter_columns=self.filter_columns,
            derive_columns=self.derive_columns,
            derived=derived,
            id_column=id_column,
            label_dtype=self.label_dtype,
        )

    def stored(self) -> str:
        """The JSON the store keeps (fields never set left out, as older servers wrote it)."""
        return self.model_dump_json(exclude_none=True, by_alias=True)

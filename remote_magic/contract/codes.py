"""Every error code of the protocol, listed once: its HTTP status, what kind of failure it is, a hint.

The server raises `Refusal(code, message)` for all of them and renders it in one handler; the client maps
each code to an exception class by its kind (`errors.error_for`), so a new code is a new line here and
nowhere else. A code of kind "job" can only end a job that ran; every other kind is a refusal that may
come before any job exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "auth",
    "not_found",
    "request",
    "spec",
    "model",
    "disclosure",
    "budget",
    "busy",
    "cancelled",
    "job",
    "server",
]


@dataclass(frozen=True)
class Code:
    status: int
    kind: Kind
    hint: str = ""


_SPEC_HINT = "%remote_datasets NAME lists the columns and their roles; --dry-run checks a spec locally."

CODES: dict[str, Code] = {
    # the request itself
    "bad_request": Code(400, "request"),
    "invalid_request": Code(422, "request"),
    "federated_needs_dp": Code(
        422, "request", "Only a dataset in privacy mode dp takes part in federated training; ask its owner."
    ),
    "federated_session_gone": Code(
        409, "request", "The server holds no session of this training: send the step with the whole model."
    ),
    "http_error": Code(400, "request"),
    "method_not_allowed": Code(405, "request"),
    "not_finished": Code(409, "request", "Wait for the job first (job.wait() or %remote_job ID)."),
    "unauthorized": Code(
        401, "auth", "Check the token in $REMOTE_MAGIC_TOKEN (or the variable named by --token-env)."
    ),
    "forbidden": Code(403, "auth", "Ask the data owner for access to this dataset."),
    "hub_unavailable": Code(503, "auth", "Retry in a moment, or connect with a token from the data owner."),
    "not_found": Code(404, "not_found"),
    "unknown_model": Code(404, "not_found", "%remote_models lists the model versions you may use."),
    "already_exists": Code(409, "request"),
    "target_not_allowed": Code(
        422, "request", "Webhook targets must be on the data owner's allowlist ([webhooks] allow)."
    ),
    # the spec
    "unknown_dataset": Code(404, "spec", "%remote_datasets lists the datasets your token grants."),
    "unknown_version": Code(404, "spec", "%remote_datasets NAME lists the dataset's versions."),
    "dataset_unavailable": Code(503, "busy", "The data owner's first snapshot of it has not been taken yet."),
    "dataset_snapshot_failed": Code(
        409, "spec", "%remote_datasets shows it with a version again once the owner's snapshot succeeds."
    ),
    "invalid_spec": Code(422, "spec", _SPEC_HINT),
    "unknown_column": Code(422, "spec", _SPEC_HINT),
    "feature_mismatch": Code(
        422, "spec", "A registered version scores only on its training features (%remote_models NAME)."
    ),
    "invalid_filter": Code(
        422, "spec", "Filters take columns, literals, comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL."
    ),
    "invalid_derive": Code(
        422,
        "spec",
        "Derive takes feature columns, literals, + - * /, CASE WHEN, ln, exp, abs, least, greatest and "
        "coalesce.",
    ),
    # the model
    "payload_too_large": Code(413, "model"),
    "invalid_model": Code(422, "model"),
    "unsupported_model": Code(422, "model"),
    "custom_code_refused": Code(422, "model"),
    "parameter_out_of_bounds": Code(422, "model"),
    "rejected_by_owner": Code(422, "model"),
    "base_model_unavailable": Code(422, "model", "%remote_models lists the versions that still exist."),
    # what may leave
    "cohort_too_small": Code(
        422,
        "disclosure",
        "Admit more rows: widen the filter, or move the evaluation fraction (the message says which way).",
    ),
    "class_too_small": Code(422, "disclosure", "Admit more rows of the rare class, or merge classes."),
    "differencing_refused": Code(
        422, "disclosure", "Change the filter by more rows, or reuse the earlier spec."
    ),
    "model_not_released": Code(403, "disclosure"),
    "model_release_refused": Code(403, "disclosure"),
    "not_released": Code(
        422,
        "disclosure",
        "The job was admitted and charged; change the spec (its features or filter), or ask the data "
        "owner, whose server log names the cause.",
    ),
    "privacy_budget_exhausted": Code(
        422, "budget", "Repeat an earlier request to see its stored answer, or ask the data owner."
    ),
    # capacity and cancellation
    "too_many_jobs": Code(429, "busy", "Wait for a running job to finish (%remote_jobs), then retry."),
    "cancelled": Code(422, "cancelled"),
    # a job that ran and failed
    "preprocessing_failed": Code(422, "job"),
    "staging_failed": Code(422, "job"),
    "training_failed": Code(422, "job"),
    "evaluation_failed": Code(422, "job"),
    "timeout": Code(422, "job"),
    "cpu_limit": Code(422, "job"),
    "out_of_memory": Code(422, "job"),
    "worker_crashed": Code(422, "job"),
    "interrupted": Code(422, "job"),
    "cluster_unavailable": Code(503, "job", "The training cluster is down; tell the data owner."),
    "cluster_worker_lost": Code(422, "job", "A machine of the training cluster was lost; submit again."),
    "cluster_busy": Code(503, "job", "The training cluster did not start the job in time; submit again."),
    "invalid_worker_report": Code(500, "job"),
    # the server
    "mock_unavailable": Code(500, "server", "Tell the dataset's data owner."),
    "internal_error": Code(500, "server"),
}


def code_of(code: str) -> Code:
    """The registered entry of a code; an unknown one (a newer server) counts as a job failure."""
    return CODES.get(code, Code(500, "job"))


class Refusal(Exception):
    """A failure with a registered public code and a message written for the user.

    The message reaches a response as is, so it is never built from another exception's text, a data
    value or a server path."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        if code not in CODES:
            raise ValueError(f"unregistered error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers

    def __reduce__(self) -> tuple:
        """Pickled as its code and message: a refusal raised where a cluster's partition is crosses
        back to the job driver as itself."""
        return (Refusal, (self.code, self.message, self.headers))

    @property
    def status(self) -> int:
        return CODES[self.code].status

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

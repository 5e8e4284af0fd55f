"""The release desk: every rule that decides what leaves the server, called from here, in one order.

Workers compute; the desk decides. It is the only caller of the pure rules in `privacy/` on the server,
and it keeps their memory (the ledger) and the record of every decision (the audit log):

1. `admit`: on the admitted rows, before anything that depends on their values runs: the cohort and
   class minimums, then the differencing guard against the sets already released to the user, whose
   new sets are recorded in the same locked step.
2. `release_result` / `release_describe`: the worker's exact report through suppression, rounding and
   (on DP datasets) the privacy budget and OpenDP noise, into the strict wire model; for a trained
   model, the model-release rules.
3. `record`: the decision, whatever it was, in the hash-chained audit log.
Progress metrics shown while a job runs and the rounded table size in the catalog pass through here too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyroaring import BitMap

from remote_magic.codes import Refusal
from remote_magic.wire import DescribeResult, JobResult, MetricPoint, PrivacyBudget

from ..audit import AuditLog
from ..privacy import describe as describe_rules
from ..privacy import policy as rules
from ..privacy.guard import check_differencing
from ..privacy.model_release import check_model_release
from ..protocol import Admission, DescribeReport, LeafFacts, TrainReport
from ..settings import Policy, Settings
from .ledger import Ledger

log = logging.getLogger("remote_magic_server.release")


@dataclass(frozen=True)
class Request:
    """Who asks for what: the context of every decision."""

    user: str
    dataset: str
    kind: str
    spec: dict
    job_id: str | None = None
    features: tuple[str, ...] = ()


@dataclass
class Admitted:
    """What `admit` let through: the counts and the row sets, for the release that follows."""

    admission: Admission
    sets: dict[str, BitMap] = field(default_factory=dict)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_row_sets(folder: Path, names: dict[str, str]) -> dict[str, BitMap]:
    """The admitted row sets a worker left in its folder, by role (file names only, never paths)."""
    return {
        str(role): BitMap.deserialize((folder / Path(str(name)).name).read_bytes())
        for role, name in names.items()
    }


class ReleaseDesk:
    def __init__(self, settings: Settings, ledger: Ledger, audit: AuditLog):
        self.settings = settings
        self.ledger = ledger
        self.audit = audit

    def policy(self, dataset: str) -> Policy:
        return self.settings.policy_for(dataset)

    def _table(self, dataset: str) -> str:
        """The ledger's key for a dataset: its file, so one table served under two names shares a history."""
        return str(self.settings.datasets[dataset].path)

    # the catalog and running jobs
    def table_size(self, dataset: str, rows: int) -> int | None:
        """A table's row count as the catalog may show it."""
        return rules.release_count(rows, self.policy(dataset))

    def progress_metric(self, latest: dict[str, dict[str, float]] | None) -> MetricPoint | None:
        """The newest train/eval metric of a running job, rounded like every released metric."""
        point = rules.release_progress_metric(latest or {})
        return MetricPoint.model_validate(point) if point is not None else None

    # 1. the admitted rows
    def admit(self, request: Request, admission: Admission, folder: Path) -> Admitted:
        """Check the admitted rows and record them as released to the user; raise Refusal if refused."""
        policy = self.policy(request.dataset)
        if request.kind == "describe":
            describe_rules.check_cohort(admission.counts["eval"], policy)
        else:
            rules.check_cohort(admission.counts, policy)
        sets = read_row_sets(folder, admission.row_sets)
        table = self._table(request.dataset)
        with self.ledger.decision():
            released = self.ledger.released_sets(request.user, table)
            check_differencing(sets, released, admission.table_rows, policy.min_count)
            source = f"job:{request.job_id}" if request.job_id else request.kind
            self.ledger.record_sets(request.user, table, source, sets)
        return Admitted(admission, sets)

    # 2. the report
    def release_result(self, request: Request, admitted: Admitted, report: TrainReport) -> JobResult:
        """A train or evaluate report as the strict, rounded result; the model-release decision with it."""
        assert request.job_id is not None
        policy = self.policy(request.dataset)
        result = rules.release(
            report, admitted.admission.counts, policy, request.job_id, request.dataset, request.kind
        )
        if request.kind == "train" and self.settings.datasets[request.dataset].allow_model_release:
            self._decide_model(request, report.model, policy)
        return result

    def _decide_model(self, request: Request, facts: LeafFacts | None, policy: Policy) -> None:
        assert request.job_id is not None
        if facts is None:
            state, message = "refused", "the model's release facts were incomplete"
        else:
            try:
                check_model_release(facts, policy)
                state, message = "awaiting_approval", "the model passed the release rules and awaits approval"
            except Refusal as refusal:
                state, message = "refused", refusal.message
        self.ledger.set_model_state(request.job_id, request.user, request.dataset, state, message)
        self.audit.record(
            "model_release_decision",
            request.user,
            job=request.job_id,
            dataset=request.dataset,
            state=state,
            reason=message,
        )

    def _request_key(self, request: Request) -> str:
        spec = request.spec
        return _digest(request.dataset, spec["label"], spec.get("where"), sorted(request.features))

    def stored_describe(self, request: Request) -> DescribeResult | None:
        """On a DP dataset, the stored answer to the same request as written (no worker, no charge)."""
        if not self.settings.datasets[request.dataset].dp:
            return None
        stored = self.ledger.stored_answer(
            request.user, self._table(request.dataset), self._request_key(request)
        )
        return None if stored is None else self._repeat(request, stored)

    def release_describe(
        self, request: Request, admitted: Admitted, report: DescribeReport
    ) -> DescribeResult:
        """A describe report through the policy and, on DP datasets, the budget and OpenDP noise.

        On DP datasets an answer is stored under two keys: the request as written and what it describes
        (the admitted rows, label and columns), so a filter spelled differently or features in another
        order get the stored answer too, never fresh noise."""
        policy = self.policy(request.dataset)
        label = request.spec["label"]
        if not self.settings.datasets[request.dataset].dp:
            return describe_rules.release_describe(report, policy, request.dataset, label)
        from ..privacy.dp import laplace_counts

        table = self._table(request.dataset)
        request_key = self._request_key(request)
        rows = admitted.sets["admitted"].serialize().hex()
        content_key = _digest(request.dataset, label, rows, sorted(request.features))
        with self.ledger.decision():
            stored = self.ledger.stored_answer(request.user, table, content_key)
            if stored is not None:
                self.ledger.store_answer(request.user, table, request_key, stored)
                return self._repeat(request, stored)
            if self.ledger.spent(request.user, table) + policy.dp_epsilon > policy.dp_epsilon_cap + 1e-9:
                raise Refusal(
                    "privacy_budget_exhausted",
                    f"your privacy budget on this dataset (epsilon {policy.dp_epsilon_cap:g}) is spent; "
                    "repeat an earlier request to see its stored answer",
                )
            noise = laplace_counts(describe_rules.sensitivity(report), policy.dp_epsilon)
            answer = describe_rules.release_describe(report, policy, request.dataset, label, noise)
            stored_json = answer.model_dump(mode="json")
            self.ledger.spend(request.user, table, [content_key, request_key], policy.dp_epsilon, stored_json)
        return answer.model_copy(update={"privacy_budget": self._budget(request, repeated=False)})

    def _repeat(self, request: Request, stored: dict) -> DescribeResult:
        answer = DescribeResult.model_validate(stored)
        return answer.model_copy(update={"privacy_budget": self._budget(request, repeated=True)})

    def _budget(self, request: Request, repeated: bool) -> PrivacyBudget:
        policy = self.policy(request.dataset)
        spent = self.ledger.spent(request.user, self._table(request.dataset))
        return PrivacyBudget(
            epsilon_per_release=policy.dp_epsilon,
            epsilon_spent=round(spent, 6),
            epsilon_remaining=round(max(0.0, policy.dp_epsilon_cap - spent), 6),
            repeated=repeated,
        )

    # 3. the record
    def record(
        self, request: Request, decision: str, code: str | None = None, reason: str | None = None
    ) -> None:
        """Every release decision, released or not, in the audit log."""
        fields: dict = {"dataset": request.dataset, "kind": request.kind, "spec": request.spec}
        if request.job_id is not None:
            fields["job"] = request.job_id
        self.audit.record(
            "release_decision", request.user, decision=decision, code=code, reason=reason, **fields
        )

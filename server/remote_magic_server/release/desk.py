"""The release desk: every rule that decides what leaves the server, called from here, in one order.

Workers compute; the desk decides. It is the only caller of the pure rules in `privacy/` on the server,
and it keeps their memory (the ledger) and the record of every decision (the audit log). A dataset is
in mode `dp` (every released number an OpenDP draw, charged to a zCDP budget per user and dataset) or
`rules` (suppression and rounding only: weaker, it does not resist attacker-chosen models).

1. `stored_result`, then `check_budget` (at submit and at start): an identical earlier request is
   answered from the ledger at no cost, even at the cap; a job the budget cannot pay for is refused
   before it runs, at no cost. A user's cap is the policy's unless the data owner set one (`cap`).
2. `admit`, on the admitted rows, before anything that depends on their values runs: in mode dp the
   job is charged first (whatever happens next) and its row counts drawn; then the cohort and class
   minimums (on the noisy counts in mode dp) and, in mode rules only, the differencing guard; the sets
   are recorded in the same locked step.
3. `release_result` / `release_describe`: the worker's exact report through the rules of its mode into
   the strict wire model, with the policy in effect and, in mode dp, the cost and the budget left; for a
   trained model, the model-release rules. `after_admission` turns any later failure into one code.
4. `record`: the decision, whatever it was, in the hash-chained audit log.

Why it is long: it is the one place that orders every disclosure rule of both modes, and it is meant to
be read in one sitting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyroaring import BitMap

from remote_magic.contract.codes import CODES, Refusal
from remote_magic.contract.query import default_eval
from remote_magic.contract.types import continuous_label_hint
from remote_magic.contract.wire import (
    BudgetCharge,
    BudgetReport,
    CostEstimate,
    DatasetBudget,
    DatasetSpec,
    DescribeResult,
    DPTraining,
    FederatedSketch,
    FederatedSums,
    JobResult,
    MetricPoint,
    ModelReleaseStatus,
    PrivacyReport,
    ReleaseOptions,
    SpecUsed,
)
from remote_magic.families.dpboost.objectives import MULTICLASS, REGRESSION
from remote_magic.families.dpboost.schedule import Release, releases
from remote_magic.families.dpboost.settings import Settings as TrainerSettings

from ..audit import AuditLog
from ..config.settings import Policy, Settings
from ..privacy import describe_rules, dp, dp_release
from ..privacy import model_release as release_rules
from ..privacy import policy as rules
from ..privacy.guard import check_differencing
from ..privacy.model_release import check_model_release, checks_passed
from ..protocol import (
    Admission,
    DescribeReport,
    ModelFacts,
    NoiseAnswer,
    NoiseRequest,
    SketchReport,
    SumsReport,
    TrainingPlan,
    TrainReport,
)
from .ledger import Ledger

log = logging.getLogger("remote_magic_server.release")

CATALOG = "(catalog)"  # the ledger's user for what the catalog shows every user of a mode-dp table

NOT_RELEASED = (
    "the job was admitted and charged, but it could not be trained, scored or released on the admitted "
    "rows; in a DP mode the cause is not told, as it could turn on one row (the data owner's server log "
    "names it)"
)
# Failures that are decisions of the desk itself, or that no row's value can cause.
_KEEP_AFTER_ADMISSION = {
    "not_released",
    "cancelled",
    "privacy_budget_exhausted",
    "cohort_too_small",
    "class_too_small",
    "differencing_refused",
}


@dataclass(frozen=True)
class Request:
    """Who asks for what: the context of every decision."""

    user: str
    dataset: str
    kind: str
    spec: dict
    job_id: str | None = None
    features: tuple[str, ...] = ()
    dataset_version: int | None = None
    options: ReleaseOptions = field(default_factory=ReleaseOptions)
    payload_sha256: str | None = None
    charge_key: str | None = None
    label_dtype: str = ""
    step_rho: float = 0.0  # a federated step (kind "sums"): its batch's share of the training's rho
    releases: tuple[Release, ...] = ()  # and the noise its proof makes (gradients, hessians), in order

    @property
    def charge(self) -> str:
        return self.charge_key or f"job:{self.job_id}"


@dataclass
class Admitted:
    """What `admit` let through: the counts and row sets, and in mode dp the counts as drawn."""

    admission: Admission
    sets: dict[str, BitMap] = field(default_factory=dict)
    noisy: dp_release.NoisyCounts | None = None
    train_rho: float = 0.0  # charged for DP training: what the job's noise requests may spend
    train_spent: float = 0.0  # what they spent so far
    noise_asked: int = 0
    releases: list[Release] | None = None  # what the declared training plan asks, in order
    # A plan whose rounds follow the intercept's row count: the releases after it, from its answer
    replan: Callable[[list[float]], list[Release]] | None = None
    noise_replay: dict[int, dict] | None = None  # an earlier run's answers, read at the first request
    noise_unkept: list[tuple[int, str]] = field(default_factory=list)  # drawn (JSON), not yet in the ledger
    sketch_key: str | None = None  # the public question a training's sketch answers (`plan_training`)
    sigmas: list[float] = field(default_factory=list)  # the Gaussian draws' standard deviations, in order
    repeated: bool = False  # a federated step charged before (the same question): its draws again, at no cost


def _classes_of(spec: dict) -> list[list[str]]:
    """A spec's classes as a part of an answer's key: a describe with classes counts them, one without
    shows the label as a column (none: the keys stored before specs had classes)."""
    return [sorted(spec["classes"])] if spec.get("classes") else []


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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

    def dp(self, dataset: str) -> bool:
        return self.policy(dataset).noisy

    def _table(self, dataset: str) -> str:
        """The guard's key for a dataset: its source (for `path =` datasets the file), so one table served
        under two names, and every version of it, share one history. Budgets are kept per dataset name."""
        config = self.settings.datasets[dataset]
        return str(config.path) if config.path is not None else config.source_config.describe()

    # the catalog and running jobs
    def table_size(self, dataset: str, version: int, content: str, rows: int) -> int | None:
        """The row count of a dataset's version (`rows`, exact; `content`, its snapshot's content hash)
        as the catalog may show it. In mode dp the exact count is not public (two versions' counts tell
        whether a row came or went): the count is a discrete Gaussian draw, made once per table content
        and stored, so every user, request and version of those rows sees the same number, and the
        privacy loss grows with the contents shown, one `dp_rho_catalog` each. A draw per distinct
        count, as it was, gave two versions of one exact count one shown count (equal shown counts said
        a row was replaced, or restored); a draw stored per dataset name gave one table served under k
        names k draws to average (red-team review 8), and one stored per table text gave one file
        served as `path =` and as `source =` two (review 10): the draw is stored under the content
        alone, read by every name that serves those rows, and charged once, on the dataset total (the
        `CATALOG` user) of the name that first showed it, never on an analyst's budget."""
        policy = self.policy(dataset)
        if not policy.noisy:
            return rules.release_count(rows, policy)
        table = self._table(dataset)
        key = _digest("catalog", "content", content)
        with self.ledger.decision():
            stored = self.ledger.stored_answer(CATALOG, content, key)
            # Draws made before they were stored by content alone are kept, not drawn again: by the
            # table's text and content, or before that by the name and version.
            for where, old in (
                (table, _digest("catalog", table, "content", content)),
                (dataset, _digest("catalog", table, "version", version)),
            ):
                stored = stored or self.ledger.stored_answer(CATALOG, where, old)
            if stored is None:
                drawn = dp.gaussian_counts([rows], 1.0, policy.dp_rho_catalog)[0][0]
                stored = {"rows": max(0, drawn)}
                self.ledger.charge(f"catalog:{key}", CATALOG, dataset, "catalog", policy.dp_rho_catalog, {})
                self.audit.record("privacy_charge", CATALOG, dataset=dataset, rho=policy.dp_rho_catalog)
            self.ledger.store_answer(CATALOG, content, key, stored)
        return int(stored["rows"])

    def progress_metric(self, dataset: str, latest: dict[str, dict[str, float]] | None) -> MetricPoint | None:
        """The newest metric of a running job, rounded; none in mode dp (it is computed from hidden rows)."""
        if self.dp(dataset):
            return None
        point = rules.release_progress_metric(latest or {})
        return MetricPoint.model_validate(point) if point is not None else None

    # 1. before anything runs
    def cost(self, request: Request) -> float:
        policy = self.policy(request.dataset)
        if not policy.noisy:
            return 0.0
        if request.kind == "describe":
            return round(policy.dp_rho_describe + self.train_cost(request), 12)
        if request.kind == "sums":
            return self.train_cost(request)
        return round(dp_release.job_cost(policy, request.options) + self.train_cost(request), 12)

    def train_cost(self, request: Request) -> float:
        """What a request's worker may spend through noise requests (`noise`), charged with the rest at
        admission: the DP trainer's part of a train job in mode dp, a describe's sketch."""
        policy = self.policy(request.dataset)
        if request.kind == "describe":
            config = self.settings.datasets[request.dataset]
            sketched = policy.noisy and bool(config.undeclared(request.spec, request.features))
            return policy.dp_rho_describe_sketch if sketched else 0.0
        if request.kind == "sums":
            return request.step_rho if policy.trains_privately else 0.0
        return policy.dp_rho_train if request.kind == "train" and policy.trains_privately else 0.0

    def cap(self, user: str, dataset: str) -> float:
        """A user's budget on a dataset: the one its data owner set for them, else the policy's cap."""
        raised = self.ledger.cap(user, dataset)
        return self.policy(dataset).dp_rho_cap if raised is None else raised

    def check_budget(self, request: Request) -> None:
        """Refuse, at no cost, a request the user's (or the dataset's) budget cannot pay for; one charged
        already (a federated step asked again) costs nothing more, so it is never refused here."""
        policy = self.policy(request.dataset)
        cost = self.cost(request)
        if not cost or (request.charge_key and self.ledger.charged(request.charge) is not None):
            return
        spent = self.ledger.spent(request.user, request.dataset)
        cap = self.cap(request.user, request.dataset)
        if spent + cost > cap + 1e-12:
            raise Refusal(
                "privacy_budget_exhausted",
                f"your privacy budget on this dataset (rho {cap:g}) cannot pay for this "
                f"request (rho {cost:g}; {max(0.0, cap - spent):.4g} left); repeat an earlier "
                "request to see its stored answer, or ask the data owner to raise your budget "
                f"(remote-magic-server budget set {request.user} {request.dataset} RHO "
                f"{self.settings.owner_flag})",
            )
        if (
            policy.dp_rho_dataset_cap
            and self.ledger.spent_by_all(request.dataset) + cost > policy.dp_rho_dataset_cap
        ):
            raise Refusal(
                "privacy_budget_exhausted",
                "the privacy budget of this dataset across all analysts is spent; ask its data owner",
            )

    def charge_note(self, request: Request) -> str | None:
        """In mode dp, what a job that did not succeed cost: said with its failure, never in silence."""
        if not self.dp(request.dataset):
            return None
        rho = self.ledger.rho_of(request.charge)
        if not rho:
            return "nothing was charged to your privacy budget"
        left = max(
            0.0, self.cap(request.user, request.dataset) - self.ledger.spent(request.user, request.dataset)
        )
        return (
            f"its rows were admitted, so it was charged rho {rho:g} of your privacy budget ({left:.4g} left)"
        )

    def budget(self, user: str, datasets: list[str]) -> BudgetReport:
        """A user's budgets on the mode-dp datasets among `datasets`, with the charges that spent them."""
        shown = []
        for dataset in datasets:
            if dataset not in self.settings.datasets or not self.dp(dataset):
                continue
            charges = [
                BudgetCharge(
                    job_id=c["charge"][4:] if c["charge"].startswith("job:") else None,
                    kind=c["kind"],
                    rho=round(c["rho"], 6),
                    at=c["created_at"][:19] + "Z",
                )
                for c in self.ledger.charges(user, dataset)
            ]
            spent = sum(c.rho for c in charges)
            cap = self.cap(user, dataset)
            shown.append(
                DatasetBudget(
                    dataset=dataset,
                    rho_cap=cap,
                    rho_spent=round(spent, 6),
                    rho_remaining=round(max(0.0, cap - spent), 6),
                    raised=self.ledger.cap(user, dataset) is not None,
                    charges=charges,
                )
            )
        return BudgetReport(user=user, datasets=shown)

    def _request_key(self, request: Request) -> str:
        return _digest(
            request.kind,
            request.spec,
            request.payload_sha256,
            request.options.model_dump(),
            self._table(request.dataset),
            request.dataset_version,
        )

    def stored_result(self, request: Request) -> tuple[JobResult, str] | None:
        """In mode dp, the stored result of an identical earlier job (same spec, model bytes, options and
        dataset version), repeated at no cost (never fresh noise for the same question), and the id of
        the job that computed it, whose model it is."""
        if not self.dp(request.dataset) or request.payload_sha256 is None:
            return None
        stored = self.ledger.stored_answer(request.user, request.dataset, self._request_key(request))
        if stored is None:
            return None
        result = JobResult.model_validate(stored)
        repeated = result.model_copy(
            update={"job_id": request.job_id, "privacy": self._report(request, 0.0, repeated=True)}
        )
        return repeated, result.job_id

    # 2. the admitted rows
    def admit(self, request: Request, admission: Admission, folder: Path) -> Admitted:
        """Charge (mode dp), check the admitted rows and record them as released; raise Refusal if refused."""
        policy = self.policy(request.dataset)
        admitted = Admitted(admission, read_row_sets(folder, admission.row_sets))
        with self.ledger.decision():
            if policy.noisy:
                admitted.train_rho = self.train_cost(request)
                admitted.repeated = request.kind == "sums" and self.ledger.charged(request.charge) is not None
                admitted.noisy = self._charge(request, admission, policy)
                if admitted.noisy is not None:
                    noisy = admitted.noisy
                    self._check_classes(request, lambda: dp_release.check_cohort(noisy, policy))
            elif request.kind == "describe":
                describe_rules.check_cohort(admission.counts["eval"], policy)
            else:
                self._check_classes(request, lambda: rules.check_cohort(admission.counts, policy))
            table = self._table(request.dataset)
            if not policy.noisy:
                # Mode rules only: a refusal that depends on the exact rows answers a question about them
                # (group OR one person's values is refused exactly when that person is in the table);
                # in mode dp the noise covers differencing, so nothing may refuse on the rows there.
                released = self.ledger.released_sets(request.user, table)
                check_differencing(admitted.sets, released, admission.table_rows, policy.min_count)
            source = f"job:{request.job_id}" if request.job_id else request.kind
            self.ledger.record_sets(request.user, table, source, admitted.sets)
        return admitted

    def readmit(self, request: Request, admission: Admission) -> Admitted:
        """A federated step on its session's rows, charged as `admit` charges (the same key, cost and
        audit line), from the admission of the session's first step as this desk admitted it: a sums
        step as that step was, the final evaluation (kind `evaluate`) as an evaluate job on the session's
        evaluation rows (their counts drawn, the cohort checked on them, `dp_rho_job` charged). Nothing
        else of `admit` depends on a step: its row sets, the same rows, are in the ledger since that
        first step (mode dp only: mode rules' differencing guard runs on every admission, so a session
        there is refused)."""
        policy = self.policy(request.dataset)
        if request.kind not in ("sums", "evaluate") or not policy.trains_privately:
            raise Refusal("federated_needs_dp", "only mode dp takes part in a federated training")
        if request.kind == "evaluate":  # an evaluate job admits its evaluation rows only
            admission = admission.model_copy(update={"counts": {"eval": admission.counts["eval"]}})
        admitted = Admitted(admission)
        with self.ledger.decision():
            admitted.train_rho = self.train_cost(request)
            admitted.repeated = request.kind == "sums" and self.ledger.charged(request.charge) is not None
            admitted.noisy = self._charge(request, admission, policy)
            if admitted.noisy is not None:
                noisy = admitted.noisy
                self._check_classes(request, lambda: dp_release.check_cohort(noisy, policy))
        return admitted

    @staticmethod
    def _check_classes(request: Request, check: Callable[[], None]) -> None:
        """Run a cohort check; a class refusal on a label of decimal numbers says to use a regressor."""
        try:
            check()
        except Refusal as refusal:
            hint = continuous_label_hint(str(request.spec.get("label", "")), request.label_dtype)
            if refusal.code != "class_too_small" or not hint:
                raise
            raise Refusal(refusal.code, f"{refusal.message}; {hint}") from None

    def _charge(
        self, request: Request, admission: Admission, policy: Policy
    ) -> dp_release.NoisyCounts | None:
        """Charge the request once, drawing a job's noisy counts; a job admitted again after a restart
        gets its earlier draws back, never a second charge or fresh noise."""
        earlier = self.ledger.charged(request.charge)
        if earlier is not None:
            return dp_release.NoisyCounts.from_json(earlier) if earlier else None
        self.check_budget(request)
        noisy = (
            None
            if request.kind in ("describe", "sums")
            else dp_release.draw_counts(admission.counts, policy, admission.missing_label)
        )
        cost = self.cost(request)
        self.ledger.charge(
            request.charge,
            request.user,
            request.dataset,
            request.kind,
            cost,
            noisy.to_json() if noisy else {},
        )
        self.audit.record(
            "privacy_charge", request.user, dataset=request.dataset, charge=request.charge, rho=cost
        )
        return noisy

    def after_admission(self, request: Request, code: str, message: str) -> tuple[str, str]:
        """In mode dp, whatever fails after the rows were admitted fails with one code: which step failed
        could depend on the rows' values. The real cause goes to the server log only."""
        if not self.dp(request.dataset) or code in _KEEP_AFTER_ADMISSION:
            return code, message
        log.info("after_admission", extra={"job": request.job_id, "code": code})
        return "not_released", NOT_RELEASED

    # 2b. a DP training's noise
    def plan_training(self, request: Request, admitted: Admitted, plan: TrainingPlan) -> None:
        """Check a DP training's declared plan against what the parent knows and keep the releases its
        settings make (the trainer's own code, families/dpboost/schedule.py): the owner's label range
        for a regression, the admitted classes for a classifier, sketched columns among the job's
        features, all within the training budget. Raise `invalid_worker_report` if it does not hold."""
        if request.kind != "train" or not admitted.train_rho or admitted.releases is not None:
            raise self._bad_noise(request, "a training plan the job does not have")
        try:
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in plan.settings.items()}
            settings = TrainerSettings(**fields)  # type: ignore[arg-type]
            objective = settings.objective_()
        except (TypeError, ValueError):
            raise self._bad_noise(request, "training settings that do not hold") from None
        counts = admitted.admission.counts
        classes = {c for split in counts.values() for c in split.classes or {}}
        classifier = counts["train"].classes is not None
        label = str(request.spec.get("label", ""))
        if objective.name == REGRESSION:
            owner = self.settings.datasets[request.dataset].label_ranges.get(label)
            fits = not classifier and owner is not None and settings.label_range == tuple(owner)
        elif objective.name == MULTICLASS:
            fits = classifier and settings.num_class == len(classes)
        else:
            fits = classifier and len(classes) <= 2
        allowed = {*request.features, *(request.spec.get("derive") or {})}
        sketched = plan.sketched
        fits = fits and len(set(sketched)) == len(sketched) and set(sketched) <= allowed
        fits = fits and (plan.sketch_rho > 0) == bool(sketched) and plan.sketch_rho < admitted.train_rho
        if not fits:
            raise self._bad_noise(request, "a training plan that does not fit the job")
        planned = list(
            releases(settings, admitted.train_rho, len(sketched), plan.sketch_rho, plan.continuing)
        )
        if sum(r.cost for r in planned) > admitted.train_rho * (1 + 1e-9):
            raise self._bad_noise(request, "a training plan past its budget")
        admitted.releases = planned
        if settings.waits_for_count(plan.continuing):
            admitted.replan = lambda values: list(
                releases(
                    settings,
                    admitted.train_rho,
                    len(sketched),
                    plan.sketch_rho,
                    plan.continuing,
                    objective.count(values),
                )
            )
        if sketched and request.dataset_version is not None:
            admitted.sketch_key = _digest(
                "sketch",
                self._table(request.dataset),
                request.dataset_version,
                request.spec,
                list(request.features),
                sketched,
                planned[0].bound,
                planned[0].rho,
                # The owner's declarations set the sketch's grid: a changed range is another question.
                self.settings.datasets[request.dataset].model_dump(mode="json"),
            )

    @staticmethod
    def _bad_noise(request: Request, what: str) -> Refusal:
        log.warning("bad_noise_request", extra={"job": request.job_id, "what": what})
        return Refusal("invalid_worker_report", f"the job's worker asked for {what}")

    def noise(self, request: Request, admitted: Admitted, ask: NoiseRequest) -> NoiseAnswer:
        """Draw a DP training's noise with OpenDP, counted against what the job was charged for training
        at admission: a request past it is refused (`invalid_worker_report`), whatever it asks, and so
        is one that is not the next release of the declared plan (`plan_training`; a federated step's
        are its batch's gradient and hessian releases, `Request.releases`): its kind, its bound and its
        rho are the trainer's settings', so a worker cannot ask for less noise. A job
        that runs again after a restart gets its earlier answers back in the same order (those kept,
        `keep_noise`), never fresh noise for a question whose answer something released depends on.
        A training's sketch (its first release, when the plan sketches columns) answers a public
        question: the user's, on one dataset version, with the spec and features as written. The
        analyst's next training that asks it gets the same noisy counts again (charged as the plan says,
        as before): fresh noise on the same counts would only add to what they tell, and the sketch
        is the largest release a small job draws."""
        return self._answer(request, admitted, self._charged(request, admitted, ask), ask)

    def noise_batch(
        self, request: Request, admitted: Admitted, asks: list[NoiseRequest]
    ) -> list[NoiseAnswer]:
        """A `NoiseBatch`'s answers: each request checked and charged in turn as `noise` does (one off
        the plan refuses the batch before any of it is drawn), and a batch of Gaussians that all need
        fresh noise drawn by one OpenDP call (`dp.gaussians`: each with its own sd, at the sum of their
        rhos) instead of one each; a replayed, kept or re-planning batch goes request by request."""
        if (
            len(asks) < 2
            or any(ask.kind != "gaussian" for ask in asks)
            or admitted.replan is not None
            or (admitted.noise_asked == 0 and admitted.sketch_key)
        ):
            return [self.noise(request, admitted, ask) for ask in asks]
        seqs = [self._charged(request, admitted, ask) for ask in asks]
        if admitted.noise_replay is None:
            admitted.noise_replay = self.ledger.noise_draws(request.charge)
        if any(seq in admitted.noise_replay for seq in seqs):
            return [self._answer(request, admitted, seq, ask) for seq, ask in zip(seqs, asks, strict=True)]
        try:
            drawn = dp.gaussians([(ask.values, ask.bound, ask.rho) for ask in asks])
        except Exception:  # noqa: BLE001 - OpenDP's errors have no common type of their own
            log.warning("noise_not_drawn", extra={"job": request.job_id}, exc_info=True)
            raise self._bad_noise(request, "noise OpenDP cannot draw") from None
        answers = [NoiseAnswer(values=values) for values in drawn]
        for seq, answer in zip(seqs, answers, strict=True):
            admitted.noise_unkept.append((seq, answer.model_dump_json()))
        return answers

    def _charged(self, request: Request, admitted: Admitted, ask: NoiseRequest) -> int:
        """Check a noise request against the job's plan and charge it to the training's allowance
        (`noise`); its number in the job's sequence of requests."""
        seq = admitted.noise_asked
        cost = ask.rho
        if request.kind in ("train", "sums"):
            planned = (admitted.releases or []) if request.kind == "train" else request.releases
            expected = planned[seq] if seq < len(planned) else None
            if expected is None or not (
                ask.kind == expected.kind
                and math.isclose(ask.bound, expected.bound, rel_tol=1e-9)
                and math.isclose(ask.rho, expected.rho, rel_tol=1e-9)
            ):
                raise self._bad_noise(request, "noise its training plan does not make")
            cost = expected.cost  # a level's per-node selections after its first: 0 (disjoint rows)
        elif request.kind != "describe" or not self._describe_sketch(request, admitted, seq, ask):
            raise self._bad_noise(request, "noise its job does not make")
        spent = admitted.train_spent + cost
        if spent > admitted.train_rho * (1 + 1e-9) + 1e-15:
            log.warning("noise_past_allowance", extra={"job": request.job_id, "rho": spent})
            raise Refusal("invalid_worker_report", "the job's worker asked for more than its training budget")
        admitted.train_spent, admitted.noise_asked = spent, seq + 1
        if ask.kind == "gaussian":
            admitted.sigmas.append(dp.sigma(ask.bound, ask.rho))
        return seq

    def _answer(self, request: Request, admitted: Admitted, seq: int, ask: NoiseRequest) -> NoiseAnswer:
        """A checked and charged request's answer (`noise`): replayed, kept or drawn, and kept."""
        if admitted.noise_replay is None:
            admitted.noise_replay = self.ledger.noise_draws(request.charge)
        stored = admitted.noise_replay.get(seq)
        if stored is not None:
            return self._replanned(admitted, seq, NoiseAnswer.model_validate(stored))
        sketch = f"{admitted.sketch_key}:{len(ask.values)}" if seq == 0 and admitted.sketch_key else None
        # The kept sketch (thousands of values) goes from its stored text to the answer and back to the
        # text the ledger keeps by pydantic's JSON, not the standard library's (about 5 ms less a job).
        kept = self.ledger.stored_answer_json(request.user, request.dataset, sketch) if sketch else None
        answer = NoiseAnswer.model_validate_json(kept) if kept is not None else self._draw(request, ask)
        text = kept if kept is not None else answer.model_dump_json()  # once: a sketch's may be large
        if sketch and kept is None:
            self.ledger.store_answer_json(request.user, request.dataset, sketch, text)
        admitted.noise_unkept.append((seq, text))
        return self._replanned(admitted, seq, answer)

    @staticmethod
    def _replanned(admitted: Admitted, seq: int, answer: NoiseAnswer) -> NoiseAnswer:
        """After the intercept of a plan whose rounds follow its row count, the rest of the plan: the
        trainer's own schedule on the count this answer gives (`Settings.for_count`), so the rounds
        and every later release's rho come from a released number, never from the worker."""
        planned = admitted.releases or []
        if admitted.replan is not None and seq == len(planned) - 1:
            admitted.releases = admitted.replan(answer.values)
            admitted.replan = None
        return answer

    def _describe_sketch(self, request: Request, admitted: Admitted, seq: int, ask: NoiseRequest) -> bool:
        """Whether a describe's noise request is its one sketch (`worker.describe_task.public_choices`):
        Gaussian, at the sketch's charged rho, its bound between one count for each shown column the
        owner declared nothing for and one for every shown column (features, derived columns, label)."""
        bare = self.settings.datasets[request.dataset].undeclared(request.spec, request.features)
        shown = len(request.features) + len(request.spec.get("derive") or {}) + 1
        least, most = math.sqrt(max(1, len(bare))), math.sqrt(shown)
        return (
            seq == 0
            and ask.kind == "gaussian"
            and admitted.train_rho > 0
            and math.isclose(ask.rho, admitted.train_rho, rel_tol=1e-9)
            and least * (1 - 1e-9) <= ask.bound <= most * (1 + 1e-9)
        )

    def _draw(self, request: Request, ask: NoiseRequest) -> NoiseAnswer:
        """OpenDP's draw for a checked request; a draw OpenDP cannot make of the worker's numbers (a
        scale it cannot meet, values it rejects) is the worker's fault, never the server's failure."""
        try:
            if ask.kind == "gaussian":
                return NoiseAnswer(values=dp.gaussian(ask.values, ask.bound, ask.rho)[0])
            return NoiseAnswer(index=dp.top_k(ask.values, 1, ask.bound, ask.rho)[0])
        except Exception:  # noqa: BLE001 - OpenDP's errors have no common type of their own
            log.warning("noise_not_drawn", extra={"job": request.job_id}, exc_info=True)
            raise self._bad_noise(request, "noise OpenDP cannot draw") from None

    def keep_noise(self, request: Request, admitted: Admitted) -> None:
        """Write the answers drawn since the last call to the ledger, in one transaction: called before
        anything that depends on them leaves (`release_result`) and when a task ends. An answer is
        seen only by the confined worker until then, so one lost with the server is one nothing was
        released from, and the job's next run may draw it afresh."""
        self.ledger.store_noise_draws(request.charge, admitted.noise_unkept)
        admitted.noise_unkept = []

    def _training(self, request: Request, admitted: Admitted, report: TrainReport) -> DPTraining | None:
        """What the DP training cost, as the desk counted it from the noise it drew (not as the worker
        says), with the leaves' noise scales the worker reports."""
        facts = report.training
        if facts is None or not admitted.train_rho:
            return None
        delta = self.policy(request.dataset).dp_delta
        return DPTraining(
            rho=round(admitted.train_spent, 9),
            epsilon=round(dp.epsilon(admitted.train_spent, delta), 4),
            trees=facts.trees,
            sigma_gradient=facts.sigma_gradient,
            sigma_hessian=facts.sigma_hessian,
        )

    # 3. the report
    def release_result(self, request: Request, admitted: Admitted, report: TrainReport) -> JobResult:
        """A train or evaluate report as the strict result of its mode; the model-release decision with it."""
        assert request.job_id is not None
        policy = self.policy(request.dataset)
        if policy.noisy:
            assert admitted.noisy is not None
            result = dp_release.release_dp(
                report, admitted.noisy, policy, request.options, request.job_id, request.dataset, request.kind
            ).model_copy(
                update={
                    "dataset_version": request.dataset_version,
                    "ran_with": self._ran_with(request),
                    "training": self._training(request, admitted, report),
                }
            )
            flags = dp_release.structure_flags(report.structure, policy)
            if flags:
                self.audit.record(
                    "model_flagged", request.user, job=request.job_id, dataset=request.dataset, flags=flags
                )
            stored = result.model_dump(mode="json")
            with self.ledger.together():  # the noise kept before anything that depends on it leaves
                self.keep_noise(request, admitted)
                if request.payload_sha256 is not None:
                    key = self._request_key(request)
                    self.ledger.store_answer(request.user, request.dataset, key, stored)
            result = result.model_copy(update={"privacy": self._report(request, self.cost(request), False)})
        else:
            self.keep_noise(request, admitted)
            admission = admitted.admission
            result = rules.release(
                report,
                admission.counts,
                policy,
                request.job_id,
                request.dataset,
                request.kind,
                admission.missing_label,
            ).model_copy(
                update={"dataset_version": request.dataset_version, "ran_with": self._ran_with(request)}
            )
        if (
            request.kind == "train"
            and report.training is None  # a DP model is a DP release: no leaf rule, no approval
            and self.settings.datasets[request.dataset].allow_model_release
        ):
            self._decide_model(request, report.model, policy)
        return result

    @staticmethod
    def _ran_with(request: Request) -> SpecUsed | None:
        """The spec as resolved (the catalog's default features, the default split), for the result."""
        if not request.spec:
            return None
        spec = DatasetSpec.model_validate(request.spec)
        split = spec.eval.model_dump() if spec.eval is not None else default_eval(request.kind)
        derived = list(spec.derive or {})
        return SpecUsed.model_validate(
            {
                "label": spec.label,
                "where": spec.where,
                "eval": split,
                "features": [*request.features, *(d for d in derived if d not in request.features)],
                "derived": derived,
                "derive": dict(spec.derive or {}),
            }
        )

    def _decide_model(self, request: Request, facts: ModelFacts | None, policy: Policy) -> None:
        """The release rules' decision on a trained model, kept with what they read of it: the data
        owner reviews that before approving (`remote-magic-server approve --show JOB`)."""
        assert request.job_id is not None
        kept = None
        if facts is None:
            state, message = "refused", "the model's release facts were incomplete"
        else:
            kept = {"family": facts.family, "min_leaf_rows": facts.min_leaf_rows, **facts.facts}
            try:
                check_model_release(facts, policy)
                state, message = "awaiting_approval", "the model passed the release rules and awaits approval"
                kept["checks_passed"] = checks_passed(facts, policy)
            except Refusal as refusal:
                state, message = "refused", refusal.message
        self.ledger.set_model_state(request.job_id, request.user, request.dataset, state, message, kept)
        self.audit.record(
            "model_release_decision",
            request.user,
            job=request.job_id,
            dataset=request.dataset,
            state=state,
            reason=message,
        )

    def model_release(
        self,
        job_id: str,
        dataset: str,
        result: dict | None,
        custom_code: bool,
        base: tuple[str, bool] | None = None,
    ) -> ModelReleaseStatus:
        """Whether a finished job's trained model may leave now (`custom_code`: the job ran owner-approved
        notebook code; `base`: the registered version it continued, and whether that was a DP release);
        the job's download, the registry's, the MLflow export and a continuation's intake all ask here.
        Nothing is charged: a DP model was paid for when it was trained."""
        training = (result or {}).get("training")
        config = self.settings.datasets.get(dataset)
        decided = self.ledger.model_state(job_id)
        state, message = release_rules.may_leave(
            DPTraining.model_validate(training) if training else None,
            config is not None and config.allow_model_release,
            (decided["state"], decided["message"]) if decided else None,
            release_rules.outside_proof(custom_code, base),
        )
        return ModelReleaseStatus(job_id=job_id, state=state, message=message)

    def _describe_key(self, request: Request) -> str:
        """The request as written, on its dataset version: another version, or a derived column of the
        same name defined otherwise, is another question (the stored answer would describe other rows)."""
        spec = request.spec
        return _digest(
            request.dataset,
            spec["label"],
            spec.get("where"),
            sorted(request.features),
            *_classes_of(spec),
            request.dataset_version,
            spec.get("derive"),
        )

    def stored_describe(self, request: Request) -> DescribeResult | None:
        """In mode dp, the stored answer to the same request as written (no worker, no charge)."""
        if not self.dp(request.dataset):
            return None
        stored = self.ledger.stored_answer(request.user, request.dataset, self._describe_key(request))
        return None if stored is None else self._repeat(request, stored)

    def release_describe(self, request: Request, report: DescribeReport) -> DescribeResult:
        """A describe report through the policy and, in mode dp, OpenDP noise under the budget.

        In mode dp an answer is stored under the request as written, and only that request is its repeat.
        Not what it describes: whether two requests admit the same rows is a fact about the rows (a filter
        that leaves out one person's combination of values admits the same rows exactly when that person
        is absent), and a free repeat would answer it exactly; a filter spelled differently is a new
        question, charged and noised afresh, which the budget's composition covers."""
        policy = self.policy(request.dataset)
        label = request.spec["label"]
        if not policy.noisy:
            answer = describe_rules.release_describe(report, policy, request.dataset, label)
            return answer.model_copy(update={"dataset_version": request.dataset_version})
        with self.ledger.decision():
            l2 = math.sqrt(describe_rules.sensitivity(report))

            def noise(counts: list[int]) -> list[int]:
                return dp.gaussian_counts(counts, l2, policy.dp_rho_describe)[0]

            answer = describe_rules.release_describe(
                report, policy, request.dataset, label, noise, noisy_cohort=True
            )
            half_width = round(dp_release.Z95 * dp.sigma(l2, policy.dp_rho_describe), 1)
            answer = answer.model_copy(
                update={"dataset_version": request.dataset_version, "count_half_width": half_width}
            )
            stored_json = answer.model_dump(mode="json")
            self.ledger.store_answer(request.user, request.dataset, self._describe_key(request), stored_json)
        return answer.model_copy(update={"privacy": self._report(request, self.cost(request), False)})

    def release_sums(self, request: Request, admitted: Admitted, report: SumsReport) -> FederatedSums:
        """A federated step's noisy leaf sums: the desk's own two draws (`noise`, each checked and counted
        as a DP training's noise request) on the exact sums the report carries (gradients, hessians),
        never numbers the worker noised; the step must have spent exactly what it was charged."""
        answers = [self.noise(request, admitted, ask) for ask in report.noise.requests]
        self.keep_noise(request, admitted)
        size = report.trees * report.leaves
        if (
            len(answers) != 2
            or admitted.noise_asked != 2
            or any(len(answer.values) != size for answer in answers)
            or not math.isclose(admitted.train_spent, admitted.train_rho, rel_tol=1e-9)
        ):
            raise Refusal("invalid_worker_report", "the step's worker did not noise exactly its batch's sums")
        gradients, hessians = (answer.values for answer in answers)
        cost = 0.0 if admitted.repeated else admitted.train_rho
        return FederatedSums(
            dataset=request.dataset,
            gradients=gradients,
            hessians=hessians,
            sigma_gradient=admitted.sigmas[0],
            sigma_hessian=admitted.sigmas[1],
            privacy=self._report(request, cost, admitted.repeated),
            staged=report.staged,
        )

    def release_sketch(self, request: Request, admitted: Admitted, report: SketchReport) -> FederatedSketch:
        """A federated training's sketch: the desk's own draw (`noise`, checked against the one Gaussian
        release the request plans) on the exact counts the report carries; exactly what was charged."""
        answers = [self.noise(request, admitted, ask) for ask in report.noise.requests]
        self.keep_noise(request, admitted)
        if len(answers) != 1 or not math.isclose(admitted.train_spent, admitted.train_rho, rel_tol=1e-9):
            raise Refusal("invalid_worker_report", "the sketch's worker did not noise exactly its counts")
        cost = 0.0 if admitted.repeated else admitted.train_rho
        return FederatedSketch(
            dataset=request.dataset,
            counts=answers[0].values,
            sigma=admitted.sigmas[0],
            privacy=self._report(request, cost, admitted.repeated),
        )

    def _repeat(self, request: Request, stored: dict) -> DescribeResult:
        answer = DescribeResult.model_validate(stored)
        return answer.model_copy(update={"privacy": self._report(request, 0.0, repeated=True)})

    def _report(self, request: Request, rho: float, repeated: bool) -> PrivacyReport:
        policy = self.policy(request.dataset)
        spent = self.ledger.spent(request.user, request.dataset)
        cap = self.cap(request.user, request.dataset)
        return PrivacyReport(
            rho=round(rho, 6),
            epsilon=round(dp.epsilon(rho, policy.dp_delta), 4),
            delta=policy.dp_delta,
            rho_spent=round(spent, 6),
            rho_cap=cap,
            rho_remaining=round(max(0.0, cap - spent), 6),
            repeated=repeated,
        )

    def estimate(self, request: Request, version: int, content: str, table_rows: int | None) -> CostEstimate:
        """What a request would cost and how wide its intervals should be, before anything is spent:
        computed as the release computes them, with the class balance this user was already told, on
        the dataset version's row count as the catalog shows it."""
        policy = self.policy(request.dataset)
        if not policy.noisy:
            return CostEstimate(dataset=request.dataset, kind=request.kind, privacy="rules")  # type: ignore[arg-type]
        cost = self.cost(request)
        # What the job is charged beyond its evaluation's releases is the DP trainer's part.
        evaluation = dp_release.job_cost(policy, request.options) if request.kind != "describe" else cost
        training = max(0.0, cost - evaluation)
        spent = self.ledger.spent(request.user, request.dataset)
        cap = self.cap(request.user, request.dataset)
        notes = []
        assumed = None
        if table_rows:
            split = request.spec.get("eval") or ({"fraction": 0.2} if request.kind == "train" else {})
            fraction = float(split.get("fraction", 1.0))
            assumed = int((self.table_size(request.dataset, version, content, table_rows) or 0) * fraction)
        expected: dict[str, float] = {}
        if assumed:
            expected, notes = self._expected(request, policy, assumed)
        if spent + cost > cap + 1e-12:
            notes.insert(
                0,
                f"this would pass your budget's cap (rho {cost:g} asked, {max(0.0, cap - spent):.4g} left of "
                f"{cap:g}): it would be refused unless it repeats an earlier request exactly",
            )
        return CostEstimate(
            dataset=request.dataset,
            kind=request.kind,  # type: ignore[arg-type]
            privacy=policy.privacy,
            rho=cost,
            epsilon=round(dp.epsilon(cost, policy.dp_delta), 4),
            delta=policy.dp_delta,
            rho_eval=round(evaluation, 6),
            rho_train=round(training, 6),
            epsilon_train=round(dp.epsilon(training, policy.dp_delta), 4),
            rho_spent=round(spent, 6),
            rho_cap=cap,
            rho_remaining_after=round(max(0.0, cap - spent - cost), 6),
            over_cap=spent + cost > cap + 1e-12,
            assumed_eval_rows=assumed,
            expected=expected,
            notes=notes,
        )

    def _expected(self, request: Request, policy: Policy, rows: int) -> tuple[dict[str, float], list[str]]:
        """The expected half-widths on `rows` evaluation rows, and what they assume: a regression where
        the owner declared the label's range and no classes, else a classifier of the public classes
        (two unless declared or named), with the balance an earlier answer told this user."""
        label = str(request.spec.get("label", ""))
        config = self.settings.datasets[request.dataset]
        classes = config.column_levels.get(label, request.spec.get("classes"))
        label_range = None if classes else config.label_ranges.get(label)
        where = " (before any filter)" if request.spec.get("where") else ""
        if label_range is not None:
            expected = dp_release.expected_regression_half_widths(policy, rows, label_range)
            notes = [
                "the expected half-widths assume a regression on the evaluation rows of the whole "
                f"table{where} with the owner's label range {list(label_range)}: rmse's is the most it "
                "can be; r2's assumes labels whose sd is a sixth of the range (labels spread less widen "
                "it as the square, and r2 comes out only where their spread stands clear of its noise)"
            ]
            if "r2" not in expected:
                notes.append(
                    "r2 would not be released: the labels' spread would not stand clear of its noise"
                )
            return expected, notes
        n_classes = max(2, len(classes or []))
        balance = self._known_balance(request.user, request.dataset, label)
        expected = dp_release.expected_half_widths(policy, rows, balance or 0.5, n_classes)
        shape = (
            f"{n_classes} classes"
            if n_classes > 2
            else f"its smaller class {balance:.0%} of the rows, as an earlier answer to you said"
            if balance
            else "two balanced classes (no answer you have says the balance: %remote_describe does)"
        )
        notes = [f"the expected half-widths assume the evaluation rows of the whole table{where} and {shape}"]
        if n_classes == 2 and "auc" not in expected:
            notes.append(
                "auc would not be released: the smaller class is too small once noise is allowed for"
            )
        return expected, notes

    def _known_balance(self, user: str, dataset: str, label: str) -> float | None:
        """The smaller class's share of a binary label, from the newest answer already released to this
        user that counts its classes (a describe or a job's evaluation rows): free to use again."""
        for answer in self.ledger.answers(user, dataset):
            if answer.get("label") == label:  # a describe answer
                classes = answer.get("classes") or []
            elif (answer.get("ran_with") or {}).get("label") == label:  # a job's result
                classes = ((answer.get("summary") or {}).get("eval") or {}).get("classes") or []
            else:
                continue
            counts = [c.get("count") for c in classes]
            if len(counts) == 2 and all(counts) and sum(counts) > 0:
                return min(counts) / sum(counts)
        return None

    # 4. the record
    def record(
        self,
        request: Request,
        decision: str,
        code: str | None = None,
        reason: str | None = None,
        cause: str | None = None,
    ) -> None:
        """Every release decision, released or not, in the audit log (with the real cause of a failure
        that the analyst saw as one code)."""
        fields: dict = {
            "dataset": request.dataset,
            "dataset_version": request.dataset_version,
            "kind": request.kind,
            "spec": request.spec,
        }
        if request.job_id is not None:
            fields["job"] = request.job_id
        if cause is not None and cause != code:
            fields["cause"] = cause
        self.audit.record(
            "release_decision", request.user, decision=decision, code=code, reason=reason, **fields
        )

    @staticmethod
    def refused(code: str) -> bool:
        """Whether a code is a refusal by the rules (rather than a failure)."""
        return CODES[code].kind in ("disclosure", "budget")

"""The data owner's decisions from the command line: review held code, review and approve a model's
release (an output-checking queue), read and verify the audit log. Each reads the same config as `serve`
and writes to the same audit log."""

from __future__ import annotations

import argparse
import sys

from .config.settings import Settings


def cmd_review(args: argparse.Namespace, settings: Settings) -> int:
    """The data owner's side of custom code: list held jobs, show what one would run, decide."""
    import hashlib

    from .jobs.store import Store

    store = Store(settings.db_path, settings.jobs_dir)
    try:
        if args.action == "list":
            for job in store.awaiting_approval():
                names = ", ".join(job.plan.custom_code or []) or "unnamed code"
                print(f"{job.id}  {job.submitted_at}  user={job.user}  dataset={job.dataset}  {names}")
            return 0
        job = store.get_job(args.job_id or "")
        if job is None or job.state != "awaiting_approval":
            print(f"no job {args.job_id!r} is awaiting approval", file=sys.stderr)
            return 2
        payload = (store.job_dir(job.id) / "model.pkl").read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        if args.action == "show":
            from .executors import make_executor
            from .jobs.oneshot import review

            print(f"job {job.id} by {job.user} on {job.dataset}; payload sha256 {digest}\n")
            print(review(settings, make_executor(settings.executor), payload))
        elif args.action == "approve":
            store.approve(job.id, digest)
            print(f"approved {job.id} (sha256 {digest}); it is queued")
        else:
            store.finish(
                job.id,
                "failed",
                error=("rejected_by_owner", "the data owner did not approve this model's code"),
            )
            print(f"rejected {job.id}")
        return 0
    finally:
        store.close()


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .audit import AuditLog, read_head, verify

    if args.verify:
        verdict = verify(settings.audit_path, read_head(settings.db_path))
        print(verdict.describe(), file=sys.stdout if verdict.ok else sys.stderr)
        return 0 if verdict.ok else 1
    for entry in AuditLog(settings.audit_path).entries():
        if (args.user and entry["user"] not in args.user) or (args.kind and entry["event"] not in args.kind):
            continue
        fields = {k: v for k, v in entry.items() if k not in ("seq", "time", "event", "user", "prev", "hash")}
        print(
            f"{entry['seq']:>6} {entry['time']} {entry['event']:<22} {entry['user'] or '-':<12} "
            f"{json.dumps(fields, sort_keys=True)}"
        )
    return 0


def _review_lines(decided: dict, job) -> list[str]:
    """What the data owner reviews before approving a model: who trained it on what, its features, its
    structure, the release checks it passed and the metrics released with it (from the job's result)."""
    facts = decided["facts"] or {}
    result = (job.result if job is not None else None) or {}
    ran_with = result.get("ran_with") or {}
    features = ran_with.get("features") or (job.spec.get("features") if job is not None else None)
    lines = [
        f"job {decided['job_id']}: user {decided['user']}, dataset {decided['dataset']}, submitted "
        f"{job.submitted_at if job is not None else '?'}, family {facts.get('family', '?')}",
        f"  label: {ran_with.get('label') or (job.spec.get('label') if job is not None else '?')}"
        + (f"; where: {ran_with['where']}" if ran_with.get("where") else ""),
        f"  features: {', '.join(features) if features else '?'}",
    ]
    if ran_with.get("derive"):
        lines.append("  derived: " + "; ".join(f"{k} = {v}" for k, v in ran_with["derive"].items()))
    if facts:
        lines.append(
            f"  trees: {facts.get('n_estimators')} rounds, max_depth {facts.get('max_depth')}, "
            f"min_child_weight {facts.get('min_child_weight')}; smallest leaf: {facts.get('min_leaf_rows')} "
            "training rows"
        )
        lines += [f"  passed: {check}" for check in facts.get("checks_passed", [])]
    else:
        lines.append(
            "  (what the release rules read of this model was not recorded: decided by an older version)"
        )
    metrics = result.get("metrics") or {}
    shown = ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} n/a" for k, v in metrics.items())
    lines.append(f"  released metrics: {shown or 'none'}")
    lines.append(f"  decision: {decided['state']} ({decided['message']})")
    return lines


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    """The data owner's output check of trained models: list those awaiting approval, show what one
    is (`--show`), approve one (its review is printed first, and the approval recorded)."""
    import getpass

    from .audit import open_audit
    from .jobs.store import Store
    from .release.ledger import Ledger

    if not args.list and not args.job:
        print("usage: approve --list | approve JOB [--show]", file=sys.stderr)
        return 2
    ledger, store = Ledger(settings.ledger_path), Store(settings.db_path, settings.jobs_dir)
    try:
        if args.list:
            waiting = ledger.models_awaiting()
            for decided in waiting:
                print("\n".join(_review_lines(decided, store.get_job(decided["job_id"]))), end="\n\n")
            print(
                f"{len(waiting)} model(s) awaiting approval"
                + ("; approve one: approve JOB" if waiting else "")
            )
            return 0
        state = ledger.model_state(args.job)
        if state is None or state["state"] != "awaiting_approval":
            why = (
                "no releasable model"
                if state is None
                else f"its model is {state['state']}: {state['message']}"
            )
            print(f"job {args.job} cannot be approved: {why}", file=sys.stderr)
            return 1
        print("\n".join(_review_lines(state, store.get_job(args.job))))
        if args.show:
            return 0
        approver = args.by or getpass.getuser()
        ledger.approve_model(args.job, approver)
    finally:
        ledger.close()
        store.close()
    audit = open_audit(settings)
    audit.record(
        "model_approved", state["user"], job=args.job, dataset=state["dataset"], approved_by=approver
    )
    audit.close()
    print(f"approved: the model of job {args.job} may now be downloaded by {state['user']}")
    return 0


def _budget_rows(settings: Settings, ledger, store) -> list[tuple[str, str]]:
    """Every (user, dataset) with a budget worth showing: a token's mode-dp datasets, and whoever spent."""
    dp = {name for name in settings.datasets if settings.policy_for(name).noisy}
    pairs = {(t.user, d) for t in store.list_tokens() if t.state() == "active" for d in t.datasets if d in dp}
    pairs |= {(c["user"], c["dataset"]) for c in ledger.charges()}
    pairs |= {(c["user"], c["dataset"]) for c in ledger.caps()}
    return sorted(pairs)


LITTLE_PRIVACY_EPSILON = 10.0


def _budget_notes(settings: Settings, store, user: str, dataset: str, rho: float, spent: float) -> list[str]:
    """What an owner setting a cap may have missed: a user no active token grants the dataset (a typo?),
    a cap below what the user has already spent, and a cap whose epsilon leaves little privacy. The cap
    is set either way: it is the owner's call."""
    from remote_magic.families.dpboost.accounting import epsilon

    notes = []
    if spent > rho:
        notes.append(
            f"{user!r} has already spent rho {spent:.4g} on {dataset!r}, more than {rho:g}: what was spent "
            "stays spent, and nothing more is charged there until the cap is above it"
        )
    granted = {t.user for t in store.list_tokens() if t.state() == "active" and dataset in t.datasets}
    if user not in granted:
        notes.append(f"no active token of {user!r} grants {dataset!r}: the cap applies once one does")
    delta = settings.policy_for(dataset).dp_delta
    shown = epsilon(rho, delta)
    if shown > LITTLE_PRIVACY_EPSILON:
        notes.append(
            f"rho {rho:g} is epsilon {shown:.3g} at delta {delta:g}: above epsilon "
            f"{LITTLE_PRIVACY_EPSILON:g} the guarantee says little about one person"
        )
    return notes


def cmd_budget(args: argparse.Namespace, settings: Settings) -> int:
    """The data owner's view of privacy budgets per user and dataset (mode dp): list them, or set one
    user's cap on one dataset (raise or lower it), recorded in the audit log."""
    import getpass

    from .audit import open_audit
    from .jobs.store import Store
    from .release.ledger import Ledger

    ledger, store = Ledger(settings.ledger_path), Store(settings.db_path, settings.jobs_dir)
    try:
        if args.action == "list":
            print(f"{'user':<14} {'dataset':<24} {'spent':>10} {'cap':>10} {'left':>10}  jobs charged")
            for user, dataset in _budget_rows(settings, ledger, store):
                if args.user and user != args.user or args.dataset and dataset != args.dataset:
                    continue
                charges = ledger.charges(user, dataset)
                spent = sum(c["rho"] for c in charges)
                raised = ledger.cap(user, dataset)
                cap = settings.policy_for(dataset).dp_rho_cap if raised is None else raised
                mark = "*" if raised is not None else " "
                print(
                    f"{user:<14} {dataset:<24} {spent:>10.4g} {cap:>9g}{mark} {max(0.0, cap - spent):>10.4g}"
                    f"  {sum(c['charge'].startswith('job:') for c in charges)}"
                )
            print("(* set by the data owner; otherwise the dataset policy's dp_rho_cap)")
            return 0
        if not (args.user and args.dataset and args.rho is not None):
            print("usage: budget set USER DATASET RHO", file=sys.stderr)
            return 2
        if args.dataset not in settings.datasets or not settings.policy_for(args.dataset).noisy:
            print(f"{args.dataset!r} is not a dataset served in mode dp by this config", file=sys.stderr)
            return 2
        if not args.rho >= 0:
            print("RHO must be a number >= 0", file=sys.stderr)
            return 2
        before = ledger.cap(args.user, args.dataset)
        if before is None:
            before = settings.policy_for(args.dataset).dp_rho_cap
        spent = sum(c["rho"] for c in ledger.charges(args.user, args.dataset))
        for line in _budget_notes(settings, store, args.user, args.dataset, args.rho, spent):
            print(f"note: {line}", file=sys.stderr)
        by = args.by or getpass.getuser()
        ledger.set_cap(args.user, args.dataset, args.rho, by)
    finally:
        ledger.close()
        store.close()
    audit = open_audit(settings)
    audit.record("budget_set", args.user, dataset=args.dataset, rho_cap=args.rho, before=before, set_by=by)
    audit.close()
    print(f"{args.user} on {args.dataset}: budget rho {before:g} -> {args.rho:g} (recorded in the audit log)")
    return 0

"""`remote-magic-server`: serve, issue tokens, and run the headless demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .settings import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "demo", False):
        from .demo import default_demo_dir, demo_settings

        data_dir = Path(args.data_dir).resolve() if args.data_dir else default_demo_dir()
        return demo_settings(data_dir, host=args.host or "127.0.0.1", port=args.port or 8765)
    if not args.config:
        raise ConfigError("give --config FILE (or --demo)")
    settings = load_settings(Path(args.config))
    if getattr(args, "host", None):
        settings.server.host = args.host
    if getattr(args, "port", None):
        settings.server.port = args.port
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from .api.serving import serve

    settings = _settings(args)
    if not _checked_before_serving(settings, args.accept_audit_mismatch):
        return 1
    if args.demo and not args.no_token:
        from .jobs.store import Store

        store = Store(settings.db_path, settings.jobs_dir)
        token = store.issue_token("demo", list(settings.datasets))
        store.close()
        url = f"http://{settings.server.host}:{settings.server.port}"
        print(f"demo server: {url}\nuser: demo\ntoken: {token}\n")
        print(f"In a notebook:  %load_ext remote_magic\n                %remote_connect {url}")
        print(f"with REMOTE_MAGIC_TOKEN={token} in the kernel's environment.\n", flush=True)
    serve(settings)
    return 0


def _checked_before_serving(settings: Settings, accept_audit_mismatch: bool) -> bool:
    """The doctor's checks, logged; False on a fatal one. An audit log that does not match its anchored
    head is moved aside when the owner accepted that, and the new chain's first entry says so."""
    import logging

    from .doctor import audit_verdict, fatal, run_checks
    from .logs import configure_logging

    configure_logging(settings.server.log_level)
    log = logging.getLogger("remote_magic_server.doctor")
    findings = run_checks(settings, accept_audit_mismatch)
    levels = {"ok": logging.INFO, "warn": logging.WARNING, "fatal": logging.ERROR}
    for finding in findings:
        log.log(levels[finding.level], "doctor", extra={"check": finding.check, "detail": finding.message})
    if fatal(findings):
        log.error("refusing_to_start", extra={"fatal": [f.line() for f in fatal(findings)]})
        return False
    verdict = audit_verdict(settings)
    if not verdict.ok:
        from .audit import open_audit

        audit = open_audit(settings)
        kept = audit.restart_chain(verdict.describe(), verdict.missing)
        audit.close()
        log.warning("audit_mismatch_accepted", extra={"previous_log": kept.name, "problem": verdict.problem})
    return True


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import Finding, fatal, run_checks

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(Finding("fatal", "config", f"{exc}; fix the file").line())
        return 1
    findings = [Finding("ok", "config", f"{len(settings.datasets)} dataset(s)"), *run_checks(settings)]
    for finding in findings:
        print(finding.line())
    problems = fatal(findings)
    warnings = sum(f.level == "warn" for f in findings)
    print(
        f"{len(problems)} fatal, {warnings} warning(s)"
        + ("; serve would refuse to start" if problems else "")
    )
    return 1 if problems else 0


def cmd_token(args: argparse.Namespace) -> int:
    from . import tokens

    return tokens.run(args, _settings(args))


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup

    manifest = backup(_settings(args), Path(args.dest).resolve())
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"backed up {len(manifest['files'])} files ({size / 2**20:.1f} MiB) into {args.dest}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import restore

    print(restore(_settings(args), Path(args.source).resolve()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import default_demo_dir, run_quickstart

    data_dir = Path(args.data_dir).resolve() if args.data_dir else default_demo_dir()
    output = Path(args.output).resolve()
    print(
        f"Starting a demo server and running examples/01-quickstart.ipynb (data in {data_dir}) ...",
        flush=True,
    )
    texts = run_quickstart(output, data_dir)
    print("\nAggregate results the notebook received from the server:\n")
    for text in texts:
        print(text, end="\n\n")
    print(f"Executed notebook saved to {output / '01-quickstart.ipynb'}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """The data owner's side of custom code: list held jobs, show what one would run, decide."""
    import hashlib

    from .jobs.store import Store

    settings = _settings(args)
    store = Store(settings.db_path, settings.jobs_dir)
    try:
        if args.action == "list":
            for job in store.awaiting_approval():
                names = ", ".join(job.plan.get("custom_code") or []) or "unnamed code"
                print(f"{job.id}  {job.submitted_at}  user={job.user}  dataset={job.dataset}  {names}")
            return 0
        job = store.get_job(args.job_id or "")
        if job is None or job.state != "awaiting_approval":
            print(f"no job {args.job_id!r} is awaiting approval", file=sys.stderr)
            return 2
        payload = (store.job_dir(job.id) / "model.pkl").read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        if args.action == "show":
            from .jobs.executor import make_executor
            from .jobs.oneshot import review

            print(f"job {job.id} by {job.user} on {job.dataset}; payload sha256 {digest}\n")
            print(review(settings, make_executor(settings.executor.kind), payload))
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


def cmd_audit(args: argparse.Namespace) -> int:
    import json

    from .audit import AuditLog, read_head, verify

    settings = _settings(args)
    if args.verify:
        verdict = verify(settings.audit_path, read_head(settings.db_path))
        print(verdict.describe(), file=sys.stdout if verdict.ok else sys.stderr)
        return 0 if verdict.ok else 1
    for entry in AuditLog(settings.audit_path).entries():
        fields = {k: v for k, v in entry.items() if k not in ("seq", "time", "event", "user", "prev", "hash")}
        print(
            f"{entry['seq']:>6} {entry['time']} {entry['event']:<22} {entry['user'] or '-':<12} "
            f"{json.dumps(fields, sort_keys=True)}"
        )
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    import getpass

    from .audit import open_audit
    from .release.ledger import Ledger

    settings = _settings(args)
    ledger = Ledger(settings.ledger_path)
    try:
        state = ledger.model_state(args.job)
        if state is None or state["state"] != "awaiting_approval":
            why = (
                "no releasable model"
                if state is None
                else f"its model is {state['state']}: {state['message']}"
            )
            print(f"job {args.job} cannot be approved: {why}", file=sys.stderr)
            return 1
        approver = args.by or getpass.getuser()
        ledger.approve_model(args.job, approver)
    finally:
        ledger.close()
    audit = open_audit(settings)
    audit.record(
        "model_approved", state["user"], job=args.job, dataset=state["dataset"], approved_by=approver
    )
    audit.close()
    print(f"approved: the model of job {args.job} may now be downloaded by {state['user']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remote-magic-server", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="the server's TOML config file")
        sp.add_argument("--demo", action="store_true", help="use the demo datasets")
        sp.add_argument(
            "--data-dir", help="data directory for --demo (default: ~/.local/share/remote-magic/demo)"
        )

    serve = sub.add_parser("serve", help="run the server")
    common(serve)
    serve.add_argument("--host", help="override the configured address")
    serve.add_argument("--port", type=int, help="override the configured port")
    serve.add_argument("--no-token", action="store_true", help="with --demo: do not issue and print a token")
    serve.add_argument(
        "--accept-audit-mismatch",
        action="store_true",
        help="start although the audit log does not match its anchored head (it is kept aside; recorded)",
    )
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser(
        "doctor", help="check the config, sandbox, data, TLS and audit log before serving"
    )
    common(doctor)
    doctor.set_defaults(func=cmd_doctor, host=None, port=None)

    from . import tokens

    tokens.add_parser(sub, common).set_defaults(func=cmd_token, host=None, port=None)

    review = sub.add_parser("review", help="review jobs that hold notebook code (allow_custom_code datasets)")
    common(review)
    review.add_argument("action", choices=["list", "show", "approve", "reject"])
    review.add_argument("job_id", nargs="?", help="the job to show, approve or reject")
    review.set_defaults(func=cmd_review, host=None, port=None)

    audit = sub.add_parser("audit", help="print the audit log, or verify its hash chain")
    common(audit)
    audit.add_argument(
        "--verify",
        action="store_true",
        help="check every entry's hash and link, and the log against its anchored head",
    )
    audit.set_defaults(func=cmd_audit, host=None, port=None)

    approve = sub.add_parser("approve", help="approve the release of a job's trained model")
    common(approve)
    approve.add_argument("job", help="the job id")
    approve.add_argument("--by", help="the approver's name for the audit log (default: your login)")
    approve.set_defaults(func=cmd_approve, host=None, port=None)

    backup = sub.add_parser("backup", help="copy the data directory consistently, while the server runs")
    common(backup)
    backup.add_argument("dest", help="a new (or empty) folder for the copy")
    backup.set_defaults(func=cmd_backup, host=None, port=None)

    restore = sub.add_parser("restore", help="put a backup into the configured, empty data directory")
    common(restore)
    restore.add_argument("source", help="the folder `backup` wrote")
    restore.set_defaults(func=cmd_restore, host=None, port=None)

    demo = sub.add_parser("demo", help="run the quickstart notebook headless against a demo server")
    demo.add_argument("--data-dir", help="where the demo data and store live")
    demo.add_argument("--output", default="remote-magic-demo", help="folder for the executed notebook")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except ConfigError as exc:
        print(f"remote-magic-server: {exc}", file=sys.stderr)
        sys.exit(2)

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
    if args.demo and not args.no_token:
        from .jobs.store import Store

        store = Store(settings.db_path, settings.jobs_dir)
        token = store.issue_token("demo", list(settings.datasets))
        store.close()
        url = f"http://{settings.server.host}:{settings.server.port}"
        print(f"Demo server on {url} for the user demo. Start Jupyter with this line (in another shell):\n")
        print(f"    REMOTE_MAGIC_URL={url} REMOTE_MAGIC_TOKEN={token} jupyter lab\n")
        print("then, in a notebook:  %load_ext remote_magic  and  %remote_connect\n", flush=True)
    serve(settings)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .jobs.store import Store

    settings = _settings(args)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in settings.datasets]
    if unknown:
        print(
            f"unknown dataset(s): {', '.join(unknown)}; known: {', '.join(settings.datasets)}",
            file=sys.stderr,
        )
        return 2
    store = Store(settings.db_path, settings.jobs_dir)
    token = store.issue_token(args.user, datasets)
    store.close()
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import LOG_NAME, default_demo_dir, run_quickstart

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
    print(f"Executed notebook saved to {output / '01-quickstart.ipynb'}; logs in {output / LOG_NAME}")
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

    from .audit import AuditLog, verify

    settings = _settings(args)
    if args.verify:
        verdict = verify(settings.audit_path)
        if verdict.ok:
            print(f"audit log intact: {verdict.entries} entries")
            return 0
        print(
            f"audit log TAMPERED: {verdict.problem} (after {verdict.entries} good entries)", file=sys.stderr
        )
        return 1
    for entry in AuditLog(settings.audit_path).entries():
        fields = {k: v for k, v in entry.items() if k not in ("seq", "time", "event", "user", "prev", "hash")}
        print(
            f"{entry['seq']:>6} {entry['time']} {entry['event']:<22} {entry['user'] or '-':<12} "
            f"{json.dumps(fields, sort_keys=True)}"
        )
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    import getpass

    from .audit import AuditLog
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
    AuditLog(settings.audit_path).record(
        "model_approved", state["user"], job=args.job, dataset=state["dataset"], approved_by=approver
    )
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
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="issue a token for a user and a list of datasets")
    common(token)
    token.add_argument("--user", required=True)
    token.add_argument("--datasets", required=True, help="comma-separated dataset names")
    token.set_defaults(func=cmd_token, host=None, port=None)

    review = sub.add_parser("review", help="review jobs that hold notebook code (allow_custom_code datasets)")
    common(review)
    review.add_argument("action", choices=["list", "show", "approve", "reject"])
    review.add_argument("job_id", nargs="?", help="the job to show, approve or reject")
    review.set_defaults(func=cmd_review, host=None, port=None)

    audit = sub.add_parser("audit", help="print the audit log, or verify its hash chain")
    common(audit)
    audit.add_argument("--verify", action="store_true", help="check every entry's hash and link")
    audit.set_defaults(func=cmd_audit, host=None, port=None)

    approve = sub.add_parser("approve", help="approve the release of a job's trained model")
    common(approve)
    approve.add_argument("job", help="the job id")
    approve.add_argument("--by", help="the approver's name for the audit log (default: your login)")
    approve.set_defaults(func=cmd_approve, host=None, port=None)

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

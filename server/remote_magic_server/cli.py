"""`remote-magic-server`: serve, issue tokens, and run the headless demo."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .config.settings import ConfigError, Settings, load_settings
from .owner import cmd_approve, cmd_audit, cmd_budget, cmd_review


def settings_of(args: argparse.Namespace) -> Settings:
    if getattr(args, "demo", False):
        from .demo import default_demo_dir, demo_settings, first_free_port

        data_dir = Path(args.data_dir).resolve() if args.data_dir else default_demo_dir()
        host = args.host or "127.0.0.1"
        return demo_settings(data_dir, host=host, port=args.port or first_free_port(host, 8765))
    if not args.config:
        raise ConfigError("give --config FILE (or --demo)")
    settings = load_settings(Path(args.config))
    if getattr(args, "host", None):
        settings.server.host = args.host
    if getattr(args, "port", None):
        settings.server.port = args.port
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving import serve

    settings = settings_of(args)
    if _data_dir_taken(settings):
        return 3
    if not _checked_before_serving(settings, args.accept_audit_mismatch):
        return 1
    if args.demo and not args.no_token:
        from .jobs.store import Store

        store = Store(settings.db_path, settings.jobs_dir)
        token = store.issue_token("demo", list(settings.datasets))
        store.close()
        url = f"http://{settings.server.host}:{settings.server.port}"
        print(f"Demo server on {url} for the user demo. Start Jupyter with this line (in another shell):\n")
        print(f"    REMOTE_MAGIC_URL={url} REMOTE_MAGIC_TOKEN={token} jupyter lab\n")
        print(
            "(a new token at each start; earlier ones keep working, so a running Jupyter needs no new "
            "line: `remote-magic-server token list --demo` lists them, `token revoke ID --demo` ends one)\n"
        )
        if shutil.which("jupyter-lab") is None:
            print("(JupyterLab is not installed here: `pip install jupyterlab` first)\n")
        print("then, in a notebook:  %load_ext remote_magic  and  %remote_connect\n", flush=True)
    serve(settings)
    return 0


def _data_dir_taken(settings: Settings) -> bool:
    """One line, before any banner or token, when another server owns the data directory (a demo
    server started in another shell, most often)."""
    from .app import DataDirLock

    if not DataDirLock(settings).held():
        return False
    print(
        f"another server is already using the data directory {settings.server.data_dir}: use that one, "
        "stop it, or give this one another --data-dir",
        file=sys.stderr,
    )
    return True


def _checked_before_serving(settings: Settings, accept_audit_mismatch: bool) -> bool:
    """The doctor's checks, logged; False on a fatal one. An audit log that does not match its anchored
    head is moved aside when the owner accepted that, and the new chain's first entry says so."""
    import logging

    from .doctor import audit_verdict, fatal, run_checks
    from .logs import configure_logging

    configure_logging(settings.server.log_level)
    log = logging.getLogger("remote_magic_server.doctor")
    findings = run_checks(settings, accept_audit_mismatch)
    levels = {"ok": logging.INFO, "info": logging.INFO, "warn": logging.WARNING, "fatal": logging.ERROR}
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
        settings = settings_of(args)
    except ConfigError as exc:
        for mistake in str(exc).splitlines():  # one line per mistake (config_errors)
            print(Finding("fatal", "config", mistake).line())
        return 1
    findings = [
        Finding("ok", "config", f"{len(settings.datasets)} dataset(s)"),
        *run_checks(settings, trial=True),
    ]
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

    return tokens.run(args, settings_of(args))


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup

    manifest = backup(settings_of(args), Path(args.dest).resolve())
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"backed up {len(manifest['files'])} files ({size / 2**20:.1f} MiB) into {args.dest}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import restore

    print(restore(settings_of(args), Path(args.source).resolve()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import default_demo_dir, demo_settings
    from .quickstart import LOG_NAME, ServerStopped, run_quickstart

    data_dir = Path(args.data_dir).resolve() if args.data_dir else default_demo_dir()
    output = Path(args.output).resolve()
    print(
        f"Starting a demo server and running examples/01-quickstart.ipynb (data in {data_dir}) ...",
        flush=True,
    )
    if _data_dir_taken(demo_settings(data_dir)):
        return 3
    try:
        texts = run_quickstart(output, data_dir)
    except ServerStopped as stopped:
        print(stopped, file=sys.stderr)
        return 1
    print("\nAggregate results the notebook received from the server:\n")
    for text in texts:
        print(text, end="\n\n")
    print(f"Executed notebook saved to {output / '01-quickstart.ipynb'}; logs in {output / LOG_NAME}")
    return 0


def _owner(command: Callable[[argparse.Namespace, Settings], int]) -> Callable[[argparse.Namespace], int]:
    """A data-owner command (owner.py) called with the settings its arguments name."""
    return lambda args: command(args, settings_of(args))


def cmd_dataset(args: argparse.Namespace) -> int:
    """The data owner's view of dataset versions: list, history, refresh now, prune old ones."""
    from .data import commands

    settings = settings_of(args)
    if args.action != "list" and args.name not in settings.datasets:
        known = ", ".join(settings.datasets) or "none"
        print(f"no dataset named {args.name!r} in the config; known: {known}", file=sys.stderr)
        return 2
    if args.action == "list":
        return commands.list_datasets(settings)
    if args.action == "versions":
        return commands.show_versions(settings, args.name)
    if args.action == "refresh":
        return commands.refresh_now(settings, args.name)
    from .jobs.store import Store
    from .registry.records import ModelRegistry
    from .release.ledger import Ledger

    store, ledger = Store(settings.db_path, settings.jobs_dir), Ledger(settings.ledger_path)
    registry = ModelRegistry(settings.registry_path)
    try:
        kept = set(ledger.kept_models(args.name)) | registry.registered_jobs()
        in_use = store.dataset_versions_in_use(args.name, kept)
    finally:
        store.close()
        ledger.close()
        registry.close()
    return commands.prune_versions(settings, args.name, args.keep, in_use)


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
    review.set_defaults(func=_owner(cmd_review), host=None, port=None)

    audit = sub.add_parser("audit", help="print the audit log, or verify its hash chain")
    common(audit)
    audit.add_argument(
        "--verify",
        action="store_true",
        help="check every entry's hash and link, and the log against its anchored head",
    )
    audit.add_argument("--user", action="append", help="print only this user's entries (repeat for several)")
    audit.add_argument(
        "--kind",
        action="append",
        help="print only entries of this event, e.g. request, job_submitted (repeat for several)",
    )
    audit.set_defaults(func=_owner(cmd_audit), host=None, port=None)

    approve = sub.add_parser(
        "approve",
        help="review trained models awaiting approval (--list, --show JOB), and approve one's release",
    )
    common(approve)
    approve.add_argument("job", nargs="?", help="the job id")
    approve.add_argument(
        "--list", action="store_true", help="the models awaiting approval, each with its review"
    )
    approve.add_argument("--show", action="store_true", help="show what JOB's model is, without approving it")
    approve.add_argument("--by", help="the approver's name for the audit log (default: your login)")
    approve.set_defaults(func=_owner(cmd_approve), host=None, port=None)

    budget = sub.add_parser(
        "budget", help="privacy budgets per user and dataset (mode dp): list them, or set one user's cap"
    )
    common(budget)
    budget.add_argument("action", choices=["list", "set"])
    budget.add_argument("user", nargs="?", help="the user (list: only this user)")
    budget.add_argument("dataset", nargs="?", help="the dataset (list: only this dataset)")
    budget.add_argument(
        "rho", nargs="?", type=float, help="set: the user's new cap on the dataset (zCDP rho)"
    )
    budget.add_argument("--by", help="your name for the audit log (default: your login)")
    budget.set_defaults(func=_owner(cmd_budget), host=None, port=None)

    backup = sub.add_parser("backup", help="copy the data directory consistently, while the server runs")
    common(backup)
    backup.add_argument("dest", help="a new (or empty) folder for the copy")
    backup.set_defaults(func=cmd_backup, host=None, port=None)

    restore = sub.add_parser("restore", help="put a backup into the configured, empty data directory")
    common(restore)
    restore.add_argument("source", help="the folder `backup` wrote")
    restore.set_defaults(func=cmd_restore, host=None, port=None)

    dataset = sub.add_parser("dataset", help="dataset versions: list, versions, refresh, prune")
    common(dataset)
    dataset.add_argument("action", choices=["list", "versions", "refresh", "prune"])
    dataset.add_argument("name", nargs="?", help="the dataset (all but `list`)")
    dataset.add_argument("--keep", type=int, default=5, help="prune: how many of the newest versions to keep")
    dataset.set_defaults(func=cmd_dataset, host=None, port=None)

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

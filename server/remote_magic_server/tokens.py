"""The data owner's token commands: create, list, revoke, rotate. Every change goes to the audit log.

An analyst's token grants datasets; a metrics token (`create --metrics`) is for a Prometheus scraper
and reads GET /metrics only, which no analyst's token reads.

A secret is printed once, when it is made (create, rotate), and only its hash is stored. A user may
hold several tokens; jobs, ledgers and privacy budgets belong to the user, so revoking or rotating one
token loses nothing. Grants change only here (or, for JupyterHub users, in the config), never over HTTP.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timedelta, timezone

from .audit import open_audit
from .config.settings import ConfigError, Settings
from .jobs.store import METRICS_SCOPE, Store, TokenRow

_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str, at: datetime) -> str:
    """`90d`, `12h`, `2w`, `30m` from `at`, or an ISO date/time (UTC unless it says otherwise)."""
    match = re.fullmatch(r"(\d+)\s*([mhdw])", text.strip())
    if match:
        when = at + timedelta(**{_UNITS[match[2]]: int(match[1])})
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ConfigError(
                f"--expires {text!r}: give a duration such as 90d, 12h, 2w, or a date such as 2027-01-31"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    if when <= at:
        raise ConfigError(f"--expires {text!r} is not in the future")
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _short(stamp: str | None) -> str:
    return stamp[:16].replace("T", " ") if stamp else "-"


def _table(rows: list[TokenRow]) -> str:
    head = ("id", "user", "datasets", "created", "last used", "expires", "state", "note")
    lines = [head] + [
        (
            t.id,
            t.user,
            "(/metrics)" if t.scope == METRICS_SCOPE else ",".join(t.datasets) or "-",
            _short(t.created_at),
            _short(t.last_used_at),
            _short(t.expires_at),
            t.state(),
            t.note or "-",
        )
        for t in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines
    )


def _datasets(settings: Settings, text: str | None) -> list[str]:
    if not text:
        raise ConfigError("token create needs --user and --datasets")
    names = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in settings.datasets]
    if unknown:
        raise ConfigError(f"unknown dataset(s): {', '.join(unknown)}; known: {', '.join(settings.datasets)}")
    return names


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out `token ACTION`; the plain `token --user U --datasets D` form is `create`."""
    action = args.action or "create"
    at = datetime.now(timezone.utc)
    expires = parse_expiry(args.expires, at) if args.expires else None
    store = Store(settings.db_path, settings.jobs_dir)
    audit = open_audit(settings)
    try:
        if action == "create":
            if args.metrics and args.datasets:
                raise ConfigError("token create --metrics makes a scraper's token: it takes no --datasets")
            if not args.user and not args.metrics:
                raise ConfigError("token create needs --user and --datasets (or --metrics)")
            if args.metrics:
                row, secret = store.create_token(
                    args.user or "metrics", [], expires, args.note, scope=METRICS_SCOPE
                )
            else:
                row, secret = store.create_token(
                    args.user, _datasets(settings, args.datasets), expires, args.note
                )
            audit.record(
                "token_created",
                row.user,
                token=row.id,
                datasets=row.datasets,
                expires=row.expires_at,
                scope=row.scope,
            )
            print(secret)
            print(f"token {row.id} for {row.user}; expires {_short(row.expires_at)}", file=sys.stderr)
            return 0
        if action == "list":
            print(_table(store.list_tokens(args.user)))
            return 0
        row = store.get_token(args.token_id or "")
        if row is None:
            print(f"no token with id {args.token_id!r} (see `token list`)", file=sys.stderr)
            return 2
        if action == "revoke":
            if not store.revoke_token(row.id):
                print(f"token {row.id} was already revoked", file=sys.stderr)
                return 1
            audit.record("token_revoked", row.user, token=row.id)
            print(f"revoked token {row.id} of {row.user}; it is refused from now on")
            return 0
        secret = store.rotate_token(row.id, expires)
        if secret is None:
            print(f"token {row.id} is revoked; create a new one instead", file=sys.stderr)
            return 1
        rotated = store.get_token(row.id)
        audit.record("token_rotated", row.user, token=row.id, expires=rotated.expires_at if rotated else None)
        print(secret)
        print(f"token {row.id} of {row.user} has a new secret; the old one is refused", file=sys.stderr)
        return 0
    finally:
        audit.close()
        store.close()


def add_parser(sub: argparse._SubParsersAction, common) -> argparse.ArgumentParser:
    token = sub.add_parser(
        "token",
        help="create, list, revoke or rotate tokens",
        description="token create --user U --datasets A,B [--expires 90d] [--note TEXT] | token create "
        "--metrics [--user U] (a scraper's token: GET /metrics only) | token list "
        "[--user U] | token revoke ID | token rotate ID [--expires 90d]. The plain form "
        "`token --user U --datasets A,B` creates a token.",
    )
    common(token)
    token.add_argument("action", nargs="?", choices=["create", "list", "revoke", "rotate"])
    token.add_argument("token_id", nargs="?", help="the token's id (revoke, rotate)")
    token.add_argument("--user", help="the user the token signs in as (create; filter for list)")
    token.add_argument("--datasets", help="comma-separated dataset names (create)")
    token.add_argument("--expires", help="lifetime such as 90d, 12h, 2w, or a date (create, rotate)")
    token.add_argument("--note", default="", help="a note shown by `token list` (create)")
    token.add_argument(
        "--metrics",
        action="store_true",
        help="create a scraper's token: it reads GET /metrics and nothing else (user: metrics unless --user)",
    )
    return token

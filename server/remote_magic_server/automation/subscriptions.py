"""Webhook subscriptions and the one HTTP call the server makes to a subscriber.

Targets must match the data owner's allowlist (`[webhooks] allow`: scheme, host and port, exactly),
checked when a user subscribes and again before every attempt, so the server never calls an address the
owner did not allow. The call never follows a redirect, ignores proxy settings from the environment, and
is signed (`remote_magic.webhooks.sign`). A signing secret is shown once, in the subscription's answer,
and never logged.
"""

from __future__ import annotations

import json
import secrets
import uuid
from urllib.parse import urlsplit

import requests

from remote_magic.contract.automation_wire import Webhook, WebhookIn
from remote_magic.contract.codes import Refusal
from remote_magic.contract.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

from ..config.settings import WebhooksSection
from ..sqlitedb import Database, now
from .outbox import Due

MAX_PER_USER = 20


def _target(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.username or parts.password or not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def allowed(config: WebhooksSection, url: str) -> bool:
    """Whether `url` names exactly one of the allowed (scheme, host, port) targets."""
    target = _target(url)
    return target is not None and target in {_target(a) for a in config.allow}


class Webhooks:
    def __init__(self, db: Database, config: WebhooksSection):
        self.db = db
        self.config = config
        self.http = requests.Session()
        self.http.trust_env = False  # no proxy or netrc from the environment: the allowlist is the address

    def subscribe(self, owner: str, request: WebhookIn) -> Webhook:
        if not allowed(self.config, request.url):
            raise Refusal(
                "target_not_allowed", "this URL is not on the server's allowlist of webhook targets"
            )
        if len(self.list(owner)) >= MAX_PER_USER:
            raise Refusal("bad_request", f"you already have {MAX_PER_USER} webhooks; delete one first")
        hook = Webhook(
            id=f"wh_{uuid.uuid4().hex[:16]}",
            url=request.url,
            events=sorted(set(request.events)),  # type: ignore[arg-type]
            created=now(),
            secret=f"whsec_{secrets.token_urlsafe(32)}",
        )
        with self.db.write() as db:
            db.execute(
                "INSERT INTO webhooks (id, owner, url, events, secret, created) VALUES (?, ?, ?, ?, ?, ?)",
                (hook.id, owner, hook.url, json.dumps(hook.events), hook.secret, hook.created),
            )
        return hook

    def list(self, owner: str) -> list[Webhook]:
        rows = self.db.read(
            "SELECT id, url, events, created FROM webhooks WHERE owner = ? AND deleted IS NULL"
            " ORDER BY created",
            (owner,),
        ).fetchall()
        return [
            Webhook(id=r["id"], url=r["url"], events=json.loads(r["events"]), created=r["created"])
            for r in rows
        ]

    def owned(self, owner: str, webhook_id: str) -> Webhook:
        for hook in self.list(owner):
            if hook.id == webhook_id:
                return hook
        raise Refusal("not_found", "no such webhook")

    def delete(self, owner: str, webhook_id: str) -> None:
        self.owned(owner, webhook_id)
        with self.db.write() as db:
            db.execute("UPDATE webhooks SET deleted = ? WHERE id = ?", (now(), webhook_id))
            db.execute(
                "UPDATE deliveries SET state = 'failed', last_error = 'the webhook was deleted'"
                " WHERE webhook_id = ? AND state = 'pending'",
                (webhook_id,),
            )

    def send(self, due: Due) -> tuple[bool, int | None, str]:
        """One signed attempt: (delivered, HTTP status, what went wrong)."""
        row = self.db.read(
            "SELECT url, secret FROM webhooks WHERE id = ? AND deleted IS NULL", (due.webhook_id,)
        ).fetchone()
        if row is None:
            return False, None, "the webhook was deleted"
        if not allowed(self.config, row["url"]):
            return False, None, "the target is no longer on the allowlist"
        body = json.dumps(
            {"id": due.id, "type": due.event_type, "created": due.event_created, "data": due.data},
            sort_keys=True,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "remote-magic-webhooks",
            SIGNATURE_HEADER: sign(row["secret"], body),
            DELIVERY_HEADER: due.id,
            EVENT_HEADER: due.event_type,
        }
        try:
            response = self.http.post(
                row["url"], data=body, headers=headers, timeout=self.config.timeout_s, allow_redirects=False
            )
        except requests.RequestException as exc:
            return False, None, f"could not connect ({type(exc).__name__})"
        response.close()
        if 200 <= response.status_code < 300:
            return True, response.status_code, ""
        if 300 <= response.status_code < 400:
            return False, response.status_code, "the target answered with a redirect, which is never followed"
        return False, response.status_code, f"the target answered HTTP {response.status_code}"

"""The append-only audit log: every request and every release decision, chained by hashes.

One JSON object per line. Each entry holds the SHA-256 of the previous entry, and its own hash covers
its content and that link, so editing, removing or reordering any line breaks the chain from there on
(`verify`). Appends take an exclusive file lock, so the server and the CLI (`approve`) can both write.
The log names users, specs and decisions; it never holds a data value, and it stays on the server.

A chain alone cannot tell a log whose last entries were cut off from a shorter one, so the head (the
last sequence number and hash) is also kept outside the log: in the job store (`audit_head`), written
under the same file lock right after each entry, and optionally shipped to syslog, which can forward it
to a machine the server cannot rewrite. `verify` checks the log against the anchored head and says how
many entries are missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import logging.handlers
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .config.settings import Settings

GENESIS = "0" * 64
_TAIL_CHUNK = 65536

log = logging.getLogger("remote_magic_server.audit")


def read_head(db_path: Path) -> tuple[int, str] | None:
    """The anchored head (seq, hash) from the job store, or None if nothing was anchored yet."""
    if not Path(db_path).exists():
        return None
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT seq, hash FROM audit_head WHERE one = 1").fetchone()
    except sqlite3.OperationalError:
        return None  # a store from before anchoring (schema < 3)
    finally:
        db.close()
    return (int(row[0]), str(row[1])) if row else None


class _Head:
    """Writes the head into the job store. WAL with synchronous=NORMAL survives a crash of the process,
    like the log's own appends (flushed, not fsynced)."""

    def __init__(self, db_path: Path):
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA synchronous=NORMAL")

    def set(self, seq: int, digest: str) -> None:
        self._db.execute(
            "INSERT INTO audit_head (one, seq, hash) VALUES (1, ?, ?)"
            " ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (seq, digest),
        )

    def close(self) -> None:
        self._db.close()


class _SyslogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        log.warning("audit_syslog_failed", extra={"address": str(self.address)})


class _Syslog:
    """Ships each entry's head to syslog: `/dev/log` style socket paths, or HOST:PORT over UDP."""

    def __init__(self, address: str):
        host, sep, port = address.rpartition(":")
        target: str | tuple[str, int] = (host, int(port)) if sep and port.isdigit() else address
        self._handler = _SyslogHandler(address=target, facility=logging.handlers.SysLogHandler.LOG_AUTH)
        self._handler.ident = "remote-magic-audit: "

    def ship(self, entry: dict) -> None:
        head = {"seq": entry["seq"], "hash": entry["hash"], "event": entry["event"], "time": entry["time"]}
        self._handler.emit(logging.makeLogRecord({"msg": json.dumps(head), "levelno": logging.INFO}))

    def close(self) -> None:
        self._handler.close()


def entry_hash(entry: dict) -> str:
    """The hash of an entry without its own `hash` field, over canonical JSON."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _last_line(fh) -> bytes:
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    pos, tail = end, b""
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        fh.seek(pos)
        tail = fh.read(step) + tail
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            return lines[-1]
    return b""


class AuditLog:
    """Append entries to one log file; safe across threads and processes."""

    def __init__(self, path: Path, head_db: Path | None = None, syslog: str | None = None):
        """`head_db`: the job store that anchors the head (its schema must be current); `syslog`: where to
        ship heads as well (see `_Syslog`)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._tail: tuple[tuple[int, int], dict] | None = None
        self._head = _Head(head_db) if head_db is not None else None
        self._syslog = _Syslog(syslog) if syslog else None

    def close(self) -> None:
        if self._head is not None:
            self._head.close()
        if self._syslog is not None:
            self._syslog.close()

    def record(self, event: str, user: str | None, **fields: object) -> dict:
        """Append one entry and return it (with its sequence number and hash).

        The last entry this process wrote is remembered with the file's inode and size after the write;
        while they are unchanged nobody else appended, so the tail need not be read back (every request
        is recorded, so this is on the path of each status poll)."""
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                info = os.fstat(fh.fileno())
                if self._tail is not None and self._tail[0] == (info.st_ino, info.st_size):
                    previous: dict | None = self._tail[1]
                else:
                    last = _last_line(fh)
                    previous = json.loads(last) if last else None
                entry = {
                    "seq": previous["seq"] + 1 if previous else 1,
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "event": event,
                    "user": user,
                    **fields,
                    "prev": previous["hash"] if previous else GENESIS,
                }
                entry["hash"] = entry_hash(entry)
                line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                fh.seek(0, os.SEEK_END)
                fh.write(line)
                fh.flush()
                self._tail = (
                    (info.st_ino, info.st_size + len(line)),
                    {"seq": entry["seq"], "hash": entry["hash"]},
                )
                if self._head is not None:
                    self._head.set(entry["seq"], entry["hash"])
                if self._syslog is not None:
                    self._syslog.ship(entry)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    def restart_chain(self, problem: str, missing: int) -> Path:
        """Move a log that failed verification aside, untouched, and start a new chain whose first entry
        says why (the data owner chose to continue). Return where the old log went."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = self.path.with_name(f"{self.path.name}.mismatch-{stamp}")
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                os.replace(self.path, kept)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        self.record("audit_mismatch_accepted", None, previous_log=kept.name, problem=problem, missing=missing)
        return kept

    def entries(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


@dataclass
class Verdict:
    ok: bool
    entries: int
    problem: str = ""
    missing: int = 0
    anchored: int | None = None

    def describe(self) -> str:
        """One line for the data owner."""
        if self.ok:
            anchor = f", matching its anchored head (entry {self.anchored})" if self.anchored else ""
            return f"audit log intact: {self.entries} entries{anchor}"
        return (
            f"audit log TAMPERED: {self.problem} (after {self.entries} good entries; "
            f"{self.missing} entries missing)"
        )


def last_entry(path: Path) -> dict | None:
    """The log's last entry, read from the end of the file; None if there is none or it is not JSON."""
    if not Path(path).exists():
        return None
    with open(path, "rb") as fh, contextlib.suppress(ValueError):
        entry = json.loads(_last_line(fh))
        return entry if isinstance(entry, dict) else None
    return None


def _last_seq(path: Path) -> int:
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        return int((last_entry(path) or {}).get("seq"))  # type: ignore[arg-type]
    return 0


def verify(path: Path, head: tuple[int, str] | None = None) -> Verdict:
    """Walk the chain: every entry's hash, its link to the previous one, and consecutive numbers; then
    compare the last entries with the anchored `head` (seq, hash), if one is given.

    `missing` counts the entries between the last one in the file and the anchored head. One entry past
    the head is allowed: the process may stop between appending an entry and anchoring it."""
    prev, count, at_head = GENESIS, 0, None
    anchored = head[0] if head else None
    if not Path(path).exists():
        if head:
            return Verdict(False, 0, "the log file is missing", head[0], anchored)
        return Verdict(True, 0)
    missing = max(0, head[0] - _last_seq(path)) if head else 0
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                return Verdict(False, count, f"line {lineno}: not a JSON entry", missing, anchored)
            problem = ""
            if entry.get("prev") != prev:
                problem = "the link to the previous entry is broken"
            elif entry.get("hash") != entry_hash(entry):
                problem = "the entry does not match its hash"
            elif entry.get("seq") != count + 1:
                problem = "sequence number out of order"
            if problem:
                return Verdict(False, count, f"line {lineno}: {problem}", missing, anchored)
            prev, count = entry["hash"], count + 1
            if head and count == head[0]:
                at_head = entry["hash"]
    if head is None:
        return Verdict(True, count)
    if count < head[0]:
        problem = f"line {count + 1}: the log ends at entry {count}, its anchored head is entry {head[0]}"
        return Verdict(False, count, problem, head[0] - count, anchored)
    if at_head != head[1]:
        problem = f"line {head[0]}: entry {head[0]} is not the one anchored as the head"
        return Verdict(False, count, problem, 0, anchored)
    if count > head[0] + 1:
        problem = f"line {head[0] + 2}: {count - head[0]} entries after the anchored head were never anchored"
        return Verdict(False, count, problem, 0, anchored)
    return Verdict(True, count, anchored=anchored)


def open_audit(settings: Settings) -> AuditLog:
    """The server's audit log, anchored in its job store (brought up to date first) and shipped to syslog
    if configured: every writer, the server and the CLI, opens it this way."""
    from .jobs.store import Store

    Store(settings.db_path, settings.jobs_dir).close()
    return AuditLog(settings.audit_path, head_db=settings.db_path, syslog=settings.audit.syslog)

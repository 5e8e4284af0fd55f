"""The append-only audit log: every request and every release decision, chained by hashes.

One JSON object per line. Each entry holds the SHA-256 of the previous entry, and its own hash covers
its content and that link, so editing, removing or reordering any line breaks the chain from there on
(`verify`). Appends take an exclusive file lock, so the server and the CLI (`approve`) can both write.
The log names users, specs and decisions; it never holds a data value, and it stays on the server.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

GENESIS = "0" * 64
_TAIL_CHUNK = 65536


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

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, event: str, user: str | None, **fields: object) -> dict:
        """Append one entry and return it (with its sequence number and hash)."""
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
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
                fh.seek(0, os.SEEK_END)
                fh.write(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n")
                fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

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


def verify(path: Path) -> Verdict:
    """Walk the chain: every entry's hash, its link to the previous one, and consecutive numbers."""
    prev, count = GENESIS, 0
    if not Path(path).exists():
        return Verdict(True, 0)
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                return Verdict(False, count, f"line {lineno}: not a JSON entry")
            if entry.get("prev") != prev:
                return Verdict(False, count, f"line {lineno}: the link to the previous entry is broken")
            if entry.get("hash") != entry_hash(entry):
                return Verdict(False, count, f"line {lineno}: the entry does not match its hash")
            if entry.get("seq") != count + 1:
                return Verdict(False, count, f"line {lineno}: sequence number out of order")
            prev, count = entry["hash"], count + 1
    return Verdict(True, count)

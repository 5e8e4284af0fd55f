"""The audit chain's head is anchored in the job store (and shipped to syslog): a log cut short or
edited fails `verify` with the line and the count of missing entries, and the server refuses to start
on such a log unless told to continue, which is itself recorded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from remote_magic_server.audit import AuditLog, open_audit, read_head, verify
from remote_magic_server.config.settings import load_settings
from tests.serverproc import ServerProcess, write_config


@pytest.fixture
def settings(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return load_settings(config), config


def fill(settings, entries: int = 5) -> list[str]:
    log = open_audit(settings)
    for i in range(entries):
        log.record("release_decision", "alice", job=str(i), decision="released")
    log.close()
    return settings.audit_path.read_text().splitlines()


def audit_cli(config, *args):
    cmd = [sys.executable, "-m", "remote_magic_server", "audit", "--config", str(config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_every_entry_moves_the_anchored_head(settings):
    settings, _ = settings
    lines = fill(settings, 3)
    last = json.loads(lines[-1])
    assert read_head(settings.db_path) == (3, last["hash"])
    verdict = verify(settings.audit_path, read_head(settings.db_path))
    assert verdict.ok and verdict.entries == 3 and verdict.anchored == 3


def test_a_log_cut_short_by_one_entry_fails_with_the_line_and_the_count(settings):
    settings, config = settings
    lines = fill(settings)
    settings.audit_path.write_text("\n".join(lines[:-1]) + "\n")
    assert verify(settings.audit_path).ok  # the chain alone cannot see it
    verdict = verify(settings.audit_path, read_head(settings.db_path))
    assert not verdict.ok and verdict.missing == 1 and verdict.problem.startswith("line 5:")
    done = audit_cli(config, "--verify")
    assert done.returncode == 1
    assert "line 5" in done.stderr and "1 entries missing" in done.stderr


def test_an_edited_entry_fails_with_the_line_and_the_count(settings):
    settings, config = settings
    lines = fill(settings)
    entry = json.loads(lines[2])
    entry["decision"] = "refused"
    lines[2] = json.dumps(entry)
    settings.audit_path.write_text("\n".join(lines) + "\n")
    done = audit_cli(config, "--verify")
    assert done.returncode == 1
    assert "line 3" in done.stderr and "0 entries missing" in done.stderr


def test_an_entry_past_the_head_is_a_crash_two_are_not(settings):
    settings, _ = settings
    fill(settings, 3)
    unanchored = AuditLog(settings.audit_path)  # appends without moving the head, as a crash would
    unanchored.record("request", "alice")
    assert verify(settings.audit_path, read_head(settings.db_path)).ok
    unanchored.record("request", "alice")
    verdict = verify(settings.audit_path, read_head(settings.db_path))
    assert not verdict.ok and "never anchored" in verdict.problem


def test_heads_are_shipped_to_syslog(settings):
    settings, _ = settings
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        log = AuditLog(settings.audit_path, syslog=f"127.0.0.1:{sink.getsockname()[1]}")
        sent = [log.record("request", "alice", path=f"/v1/{i}") for i in range(3)]
        log.close()
        received = [sink.recv(4096).decode() for _ in sent]
    for entry, datagram in zip(sent, received):
        assert "remote-magic-audit:" in datagram
        head = json.loads(datagram.split("remote-magic-audit: ", 1)[1].rstrip("\x00"))
        assert head["seq"] == entry["seq"] and head["hash"] == entry["hash"]


def test_the_server_refuses_a_cut_log_unless_told_and_records_that(tmp_path):
    config = write_config(tmp_path / "data")
    server = ServerProcess(config, tmp_path / "server.log")
    lines = fill(server.settings, 4)
    server.settings.audit_path.write_text("\n".join(lines[:-1]) + "\n")
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_magic_server",
            "serve",
            "--config",
            str(config),
            "--port",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    fatal = [json.loads(line) for line in refused.stderr.splitlines() if '"refusing_to_start"' in line]
    assert fatal and "1 entries missing" in " ".join(fatal[0]["fatal"])

    server.start(extra=("--accept-audit-mismatch",))
    try:
        server.issue_tokens({"alice": ["breast_cancer"]})
        assert server.get("/whoami").status_code == 200
    finally:
        server.stop()
    first = json.loads(server.settings.audit_path.read_text().splitlines()[0])
    assert first["event"] == "audit_mismatch_accepted" and first["missing"] == 1
    kept = server.data_dir / first["previous_log"]
    assert kept.read_text().splitlines() == lines[:-1]  # the evidence is kept as it was found
    assert verify(server.settings.audit_path, read_head(server.settings.db_path)).ok

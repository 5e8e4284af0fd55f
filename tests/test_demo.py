"""The two README commands a newcomer runs first: `serve --demo` prints the line to paste, and `demo`
prints the results and nothing else (the logs go to a file)."""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import sys

import pytest

from remote_magic import Client
from remote_magic.client.errors import SpecError
from remote_magic_server.cli import settings_of
from remote_magic_server.config.settings import load_settings
from remote_magic_server.demo import _ephemeral_low, demo_settings, first_free_port, free_port
from remote_magic_server.quickstart import wait_healthy

PASTE = re.compile(r"^\s*REMOTE_MAGIC_URL=(http://\S+) REMOTE_MAGIC_TOKEN=(\S+) jupyter lab$")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-data")


def _serve_demo(demo_data, port: int) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote_magic_server", "serve", "--demo", "--data-dir", str(demo_data)]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return proc, [proc.stdout.readline() for _ in range(7)]


def test_serve_demo_prints_the_line_to_paste(demo_data):
    """Each start prints a new token and the earlier ones keep working (a Jupyter started with the last
    line survives a restart of the demo); the banner says so, and how to list or revoke them (rev11 #8)."""
    port = free_port()
    tokens = []
    for _ in range(2):
        proc, lines = _serve_demo(demo_data, port)
        try:
            pasted = [m for m in map(PASTE.match, lines) if m]
            assert len(pasted) == 1, lines
            url, token = pasted[0].groups()
            assert url == f"http://127.0.0.1:{port}"
            assert any("earlier ones keep working" in line and "token list --demo" in line for line in lines)
            wait_healthy(url)
            tokens.append(token)
            assert [Client(url, t).whoami().user for t in tokens] == ["demo"] * len(tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert tokens[0] != tokens[1]


def test_demo_prints_the_results_and_logs_to_a_file(demo_data, tmp_path):
    out = tmp_path / "demo-output"
    proc = subprocess.run(
        [sys.executable, "-m", "remote_magic_server", "demo", "--data-dir", str(demo_data)]
        + ["--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    assert "TrainResult: training of a binary classifier on synthetic" in proc.stdout
    assert '{"ts"' not in proc.stdout and "WARNING" not in proc.stdout
    assert len(proc.stdout.splitlines()) < 25
    log = (out / "server.log").read_text()
    assert '"event": "job_finished"' in log and f"logs in {out / 'server.log'}" in proc.stdout
    assert (out / "01-quickstart.ipynb").exists()


def test_free_ports_come_from_below_the_ephemeral_range_and_never_twice():
    """A test server restarted on its port must not find it taken by some client's outgoing connection,
    whose local port the kernel takes from the ephemeral range (a CI run lost a restart that way)."""
    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(10000 <= port < low for port in ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_serve_demo_without_a_port_takes_8765_or_the_next_free_one(demo_data):
    """The README says `serve --demo` listens "on 127.0.0.1:8765, or the next free port": with 8765 taken
    it printed a URL and token for 8765 and then failed to bind, so a newcomer reached the other server."""
    start = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", start))
        held.listen()
        assert first_free_port("127.0.0.1", start) > start
    assert first_free_port("127.0.0.1", start) == start
    with socket.socket() as listener:  # a connection the server's side closes first: TIME_WAIT on `start`
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", start))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", start))
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)  # the server's FIN has arrived: the server's side waits in TIME_WAIT once we close
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", start))  # the TIME_WAIT socket is there
    assert first_free_port("127.0.0.1", start) == start, "a restarted demo moved to another port"
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.socket())
        with contextlib.suppress(OSError):  # 8765 is taken already where it cannot be bound
            sock.bind(("127.0.0.1", 8765))
            sock.listen()
        args = argparse.Namespace(demo=True, data_dir=str(demo_data), host=None, port=None)
        assert settings_of(args).server.port > 8765


def test_owner_commands_are_named_with_demo_only_on_a_demo(demo_data, tmp_path):
    """A budget refusal told analysts of a real deployment "... or --demo"."""
    assert demo_settings(demo_data).owner_flag == "--demo"
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path}"\n')
    assert load_settings(config).owner_flag == "--config FILE"


def test_a_second_demo_on_a_busy_data_directory_says_so_in_one_line(tmp_path):
    """With `serve --demo` running, a second `serve --demo` printed a new URL and token, then exited 3
    with a traceback; `demo` waited 60 s and printed a traceback. The reason was only in a log."""
    data = tmp_path / "data"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "remote_magic_server",
            "serve",
            "--demo",
            "--no-token",
            "--data-dir",
            str(data),
        ]
        + ["--port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{first.args[-1]}", process=first)
        for command in (["serve", "--demo", "--port", str(free_port())], ["demo", "--output", str(tmp_path)]):
            second = subprocess.run(
                [sys.executable, "-m", "remote_magic_server", *command, "--data-dir", str(data)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert second.returncode == 3, command
            assert "REMOTE_MAGIC_TOKEN" not in second.stdout and "Traceback" not in second.stderr
            assert second.stderr.strip().splitlines() == [
                f"another server is already using the data directory {data}: use that one, stop it, or "
                "give this one another --data-dir"
            ]
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_a_misspelt_region_on_the_demo_is_refused_before_any_charge(demo_data):
    """The demo declares `region`'s levels, so a newcomer's typo costs nothing (it used to be charged,
    then refused as a cohort too small)."""
    proc, lines = _serve_demo(demo_data, free_port())
    try:
        url, token = next(m for m in map(PASTE.match, lines) if m).groups()
        wait_healthy(url)
        client = Client(url, token)
        assert client.dataset("synthetic").column_levels["region"] == ["east", "north", "south", "west"]
        spent = client.budget("synthetic")["synthetic"].rho_spent
        with pytest.raises(SpecError, match=r"'nrth' is not one of the levels .*column_levels\.region"):
            client.describe({"dataset": "synthetic", "label": "label", "where": "region = 'nrth'"})
        assert client.budget("synthetic")["synthetic"].rho_spent == spent
        assert client.describe({"dataset": "synthetic", "label": "label", "where": "region = 'north'"}).rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""Test session wiring: one real server on loopback, shared by the tests and the example notebooks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

from remote_magic_server.demo import free_port
from tests.serverproc import ServerProcess, magic_shell, write_config

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

_shared: dict[str, ServerProcess] = {}
# A loopback port the shared server may call webhooks on (the example notebook listens there).
HOOK_PORT = free_port()
SHARED_EXTRA = f"""
[registry]
grants = {{ shared_with_bob = ["bob"] }}

[webhooks]
allow = ["http://127.0.0.1:{HOOK_PORT}"]
backoff_s = 0.2

[automation]
poll_s = 0.3
"""


def _shared_server(config: pytest.Config) -> ServerProcess:
    if "server" not in _shared:
        base = config._tmp_path_factory.mktemp("server")  # type: ignore[attr-defined]
        server = ServerProcess(write_config(base / "data", extra=SHARED_EXTRA), base / "server.log")
        server.issue_tokens()
        _shared["server"] = server.start()
    return _shared["server"]


@pytest.fixture(scope="session")
def server(pytestconfig: pytest.Config) -> ServerProcess:
    """The session's server: demo datasets; users alice (all datasets) and bob (breast_cancer only); alice's
    model `shared_with_bob` is granted to bob; webhooks may call 127.0.0.1:HOOK_PORT."""
    return _shared_server(pytestconfig)


@pytest.fixture(scope="session")
def dask_cluster():
    """One `LocalCluster` on loopback (two worker processes, one thread each) for the `dask` tests that
    only run work on it; a test that kills, blocks or locks workers starts a cluster of its own."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
    ) as cluster:
        yield cluster


@pytest.fixture()
def shell_as(monkeypatch) -> Iterator[Callable[..., InteractiveShell]]:
    """`shell_as(server, user)`: a real IPython shell with the extension loaded, signed in to that server
    as that user through the environment, as a kernel would be (`url=False`: the token only, for tests
    that connect by hand). Unloaded and its namespace emptied after the test."""
    with ExitStack() as stack:

        def open_shell(served: ServerProcess, user: str = "alice", url: bool = True) -> InteractiveShell:
            return stack.enter_context(magic_shell(served, user, monkeypatch, url))

        yield open_shell


@pytest.fixture()
def shell(server, shell_as):
    """A real IPython shell with the extension loaded, pointed at the session's server as alice."""
    return shell_as(server)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Example notebooks run against the session's server: point their kernel at it before it starts."""
    if type(item).__name__ == "IPyNbCell" and os.environ.get("_REMOTE_MAGIC_TEST_ENV") != "1":
        server = _shared_server(item.config)
        os.environ.update(
            REMOTE_MAGIC_URL=server.url,
            REMOTE_MAGIC_TOKEN=server.tokens["alice"],
            REMOTE_MAGIC_PROGRESS="off",
            REMOTE_MAGIC_HOOK_PORT=str(HOOK_PORT),
            _REMOTE_MAGIC_TEST_ENV="1",
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    server = _shared.pop("server", None)
    if server is not None:
        server.stop()

"""JupyterHub sign-in against a real JupyterHub on loopback (dummy authenticator, configurable-http-proxy
from npm): Hub users reach only the datasets their user or group is granted, a kernel's Hub token is
picked up by %remote_connect, and a stopped Hub gives a clear error at once."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
import requests
from IPython.core.interactiveshell import InteractiveShell

import remote_magic
from remote_magic import Client
from remote_magic.client.errors import AuthError
from remote_magic_server.demo import free_port
from tests.serverproc import ServerProcess, write_config

HUB_CONFIG = """
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"ann", "ben", "cid"}}
c.JupyterHub.load_groups = {{"analysts": {{"users": ["ann"]}}}}
c.JupyterHub.services = [
    {{"name": "remote-magic", "api_token": "{service_token}"}},
    {{"name": "test-admin", "api_token": "{admin_token}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "remote-magic-groups", "services": ["remote-magic"], "scopes": ["read:users:groups"]}},
    {{"name": "test-token-maker", "services": ["test-admin"], "scopes": ["admin:users", "tokens"]}},
]
c.JupyterHub.db_url = "sqlite:///{folder}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{folder}/cookie_secret"
c.JupyterHub.pid_file = "{folder}/hub.pid"
"""


class Hub:
    """A JupyterHub process on free loopback ports, started and stopped by the test."""

    def __init__(self, folder):
        self.folder = folder
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/hub/api"
        self.service_token = secrets.token_hex(16)
        self.admin_token = secrets.token_hex(16)
        config = folder / "jupyterhub_config.py"
        config.write_text(
            HUB_CONFIG.format(
                proxy_port=free_port(),
                hub_port=self.port,
                proxy_api_port=free_port(),
                service_token=self.service_token,
                admin_token=self.admin_token,
                folder=folder,
            )
        )
        log = open(folder / "hub.log", "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (folder / "hub.log").read_text()[-2000:]
            try:
                if requests.get(f"{self.api_url}/", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("JupyterHub did not start")

    def token(self, user: str) -> str:
        """An API token for `user` with a kernel's narrow scopes: it cannot even read the user's groups."""
        response = requests.post(
            f"{self.api_url}/users/{user}/tokens",
            headers={"Authorization": f"token {self.admin_token}"},
            json={"note": "test kernel", "scopes": ["users:activity!user"]},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["token"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def hub_and_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub")
    hub = Hub(folder)
    extra = (
        f'[jupyterhub]\napi_url = "{hub.api_url}"\napi_token_env = "REMOTE_MAGIC_TEST_HUB_TOKEN"\n'
        'users = { ben = ["diabetes_rules"] }\ngroups = { analysts = ["breast_cancer_rules"] }\n'
    )
    server = ServerProcess(write_config(folder / "data", extra_datasets=extra), folder / "server.log")
    server.issue_tokens({"alice": ["synthetic_rules"]})
    os.environ["REMOTE_MAGIC_TEST_HUB_TOKEN"] = hub.service_token
    try:
        server.start()
        yield hub, server
    finally:
        del os.environ["REMOTE_MAGIC_TEST_HUB_TOKEN"]
        server.stop()
        hub.stop()


def as_hub_user(server, token: str, path: str = "/whoami") -> requests.Response:
    return server.get(path, user=None, headers={"Authorization": f"Bearer {token}"})


def test_hub_users_reach_only_the_datasets_they_are_granted(hub_and_server):
    hub, server = hub_and_server
    assert server.get("/health", user=None).json()["auth"] == ["token", "jupyterhub"]
    ann, ben, cid = hub.token("ann"), hub.token("ben"), hub.token("cid")
    assert as_hub_user(server, ann).json() == {"user": "hub:ann", "datasets": ["breast_cancer_rules"]}
    assert [d["name"] for d in as_hub_user(server, ann, "/datasets").json()] == ["breast_cancer_rules"]
    assert as_hub_user(server, ann, "/datasets/diabetes_rules").status_code == 404
    assert as_hub_user(server, ben).json() == {"user": "hub:ben", "datasets": ["diabetes_rules"]}
    refused = as_hub_user(server, cid)
    assert refused.status_code == 403 and "no dataset" in refused.json()["error"]["message"]
    assert as_hub_user(server, "not-a-hub-token").status_code == 401
    assert server.get("/whoami").json()["user"] == "alice"  # our own tokens still work beside the Hub's
    log = server.settings.audit_path.read_text()
    assert '"user":"hub:ann","via":"jupyterhub"' in log and ann not in log


def test_a_kernel_in_the_hub_connects_with_its_hub_token(hub_and_server, monkeypatch, capsys):
    hub, server = hub_and_server
    monkeypatch.delenv("REMOTE_MAGIC_TOKEN", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", hub.token("ann"))
    monkeypatch.setenv("REMOTE_MAGIC_PROGRESS", "off")
    ip = InteractiveShell.instance()
    remote_magic.load_ipython_extension(ip)
    try:
        ip.run_line_magic("remote_connect", server.url)
        assert "as hub:ann (1 dataset(s))" in capsys.readouterr().out
        done = ip.run_cell(
            "%%remote_train --dataset breast_cancer_rules --label malignant -o r\n"
            "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=3, max_depth=2)"
        )
        done.raise_error()
        assert ip.user_ns["r"].metrics["auc"] > 0.5
        wrong = ip.run_cell("%remote_datasets diabetes_rules")
        assert wrong.error_in_exec is not None and "unknown_dataset" in str(wrong.error_in_exec)
    finally:
        remote_magic.unload_ipython_extension(ip)


def test_a_stopped_hub_gives_a_clear_error_not_a_hang(hub_and_server, monkeypatch):
    hub, server = hub_and_server
    token = hub.token("ann")
    hub.stop()
    started = time.monotonic()
    answer = as_hub_user(server, token)
    assert time.monotonic() - started < 10
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "hub_unavailable"
    assert "JupyterHub did not answer" in answer.json()["error"]["message"]
    monkeypatch.delenv("REMOTE_MAGIC_TOKEN", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    with pytest.raises(AuthError, match="JupyterHub did not answer") as caught:
        Client(server.url).whoami()
    assert len(caught.value._render_traceback_()) == 2  # the message and what to do
    assert server.get("/whoami").status_code == 200  # the server itself keeps serving

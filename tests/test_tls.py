"""HTTPS on loopback with certificates made here (trustme): the client and the magics verify the server,
a wrong CA is refused with one line, client certificates are required when configured, and plain HTTP to
a host that is not loopback is refused before any connection is made."""

from __future__ import annotations

import pytest
import trustme
import xgboost as xgb

from remote_magic import Client
from remote_magic.client.errors import ConnectionProblem
from remote_magic.contract.addresses import is_loopback
from tests.serverproc import ServerProcess, write_config

SPEC = {"dataset": "breast_cancer_rules", "label": "malignant"}


def tls_server(base, ca: trustme.CA, client_ca: trustme.CA | None = None) -> ServerProcess:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    cert.private_key_pem.write_to_path(str(base / "key.pem"))
    # A TLS connection a client dropped without closing TLS holds uvicorn's graceful stop for up to
    # shutdown_grace_s (asyncio waits for the peer's close_notify): keep it short here.
    extra = f'tls_cert = "{base / "cert.pem"}"\ntls_key = "{base / "key.pem"}"\nshutdown_grace_s = 1\n'
    if client_ca is not None:
        client_ca.cert_pem.write_to_path(str(base / "clients.pem"))
        extra += f'tls_client_ca = "{base / "clients.pem"}"\n'
    server = ServerProcess(write_config(base / "data", extra=extra), base / "server.log")
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    server.verify = str(base / "ca.pem")
    server.issue_tokens({"alice": ["breast_cancer_rules"]})
    return server


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    server = tls_server(base, trustme.CA()).start()
    yield server
    server.stop()


@pytest.fixture()
def shell(https, shell_as, monkeypatch):
    """Signed in with the token only: each test connects to the TLS server by hand."""
    monkeypatch.delenv("REMOTE_MAGIC_CA_BUNDLE", raising=False)
    return shell_as(https, url=False)


def test_the_client_trains_over_tls(https):
    assert https.url.startswith("https://")
    client = Client(https.url, https.tokens["alice"], ca_bundle=https.verify)
    assert client.whoami().user == "alice"
    result = client.train(
        xgb.XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=3), SPEC, timeout=120
    )
    assert result.metrics["auc"] > 0.5


def test_the_ca_bundle_comes_from_the_environment_too(https, monkeypatch):
    monkeypatch.setenv("REMOTE_MAGIC_CA_BUNDLE", https.verify)
    assert Client(https.url, https.tokens["alice"]).whoami().user == "alice"


def test_a_wrong_ca_is_refused_with_one_line(https, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(ConnectionProblem) as caught:
        Client(https.url, https.tokens["alice"], ca_bundle=str(other)).whoami()
    lines = caught.value._render_traceback_()
    assert len(lines) == 1 and "not trusted" in lines[0] and "--ca-bundle" in lines[0]
    with pytest.raises(ConnectionProblem, match="not trusted"):
        Client(https.url, https.tokens["alice"]).whoami()  # the system's CAs do not know ours either


def test_the_magics_work_over_tls(shell, https, capsys):
    shell.run_line_magic("remote_connect", f"{https.url} --ca-bundle {https.verify}")
    assert f"Connected to {https.url} as alice" in capsys.readouterr().out
    result = shell.run_cell(
        "%%remote_train --dataset breast_cancer_rules --label malignant -o r\n"
        "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=3, max_depth=2)"
    )
    result.raise_error()
    assert shell.user_ns["r"].metrics["auc"] > 0.5


def test_the_magics_refuse_a_wrong_ca_with_one_line(shell, https):
    result = shell.run_cell(f"%remote_connect {https.url}")
    assert isinstance(result.error_in_exec, ConnectionProblem)
    assert "not trusted" in str(result.error_in_exec)


def test_plain_http_to_a_host_that_is_not_loopback_is_refused_before_connecting(shell, monkeypatch):
    monkeypatch.setenv("REMOTE_MAGIC_TOKEN", "rm_never-sent")
    with pytest.raises(ConnectionProblem, match="refusing plain http:// to analysis.example"):
        Client("http://analysis.example:8765")
    result = shell.run_cell("%remote_connect http://analysis.example:8765")
    assert isinstance(result.error_in_exec, ConnectionProblem)
    assert len(result.error_in_exec._render_traceback_()) == 1
    assert "--insecure" in str(result.error_in_exec)
    told = Client("http://analysis.example:8765", insecure=True)  # constructing it sends nothing
    assert told.url == "http://analysis.example:8765"
    for host in ("127.0.0.1", "127.8.0.1", "localhost", "[::1]"):
        assert Client(f"http://{host}:8765").url.startswith("http://")
    assert not any(is_loopback(h) for h in ("10.0.0.1", "analysis.example", "localhost.example.org"))


def test_client_certificates_are_required_when_configured(tmp_path):
    clients = trustme.CA()
    server = tls_server(tmp_path, trustme.CA(), client_ca=clients)
    pem = tmp_path / "alice.pem"
    clients.issue_cert("alice@analysis").private_key_and_cert_chain_pem.write_to_path(str(pem))
    server.cert = str(pem)
    server.start()
    try:
        with pytest.raises(ConnectionProblem, match="client certificate"):
            Client(server.url, server.tokens["alice"], ca_bundle=server.verify).whoami()
        client = Client(server.url, server.tokens["alice"], ca_bundle=server.verify, client_cert=str(pem))
        assert client.whoami().user == "alice"
    finally:
        server.stop()

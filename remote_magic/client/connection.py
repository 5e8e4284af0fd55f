"""How the client reaches a server safely: TLS verified by default, no plain HTTP across a network, and
the JupyterHub token a kernel in a Hub already has.

Everything here decides before a connection is opened: a plain `http://` URL to a host that is not
loopback (judged by the name as written, never by a DNS lookup) is refused unless the caller says
`insecure`, because the bearer token would cross the network in clear text.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import requests

from ..contract.addresses import is_loopback
from .errors import ConnectionProblem

CA_BUNDLE_ENV = "REMOTE_MAGIC_CA_BUNDLE"
CLIENT_CERT_ENV = "REMOTE_MAGIC_CLIENT_CERT"
HUB_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"  # noqa: S105 - a variable name


def check_url(url: str, insecure: bool = False) -> str:
    """The URL without a trailing slash; refuses what would send the token in clear text."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionProblem(f"the URL must start with http:// or https:// (got {url!r})")
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname):
        raise ConnectionProblem(
            f"refusing plain http:// to {parts.hostname}: the token would cross the network unencrypted; "
            "use https://, or pass insecure=True (%remote_connect --insecure) if you must"
        )
    return url.rstrip("/")


def tls_verify(ca_bundle: str | None = None) -> bool | str:
    """What requests verifies the server's certificate with: a CA bundle file, else the system's CAs."""
    bundle = ca_bundle or os.environ.get(CA_BUNDLE_ENV)
    if not bundle:
        return True
    if not os.path.isfile(bundle):
        raise ConnectionProblem(f"the CA bundle {bundle} does not exist")
    return bundle


def client_cert_file(path: str | None = None) -> str | None:
    """A PEM file with this client's certificate and key, for servers that require one."""
    cert = path or os.environ.get(CLIENT_CERT_ENV)
    if cert and not os.path.isfile(cert):
        raise ConnectionProblem(f"the client certificate {cert} does not exist")
    return cert or None


def hub_token() -> str | None:
    """The API token JupyterHub gives every kernel it starts, if this kernel runs in a Hub."""
    return os.environ.get(HUB_TOKEN_ENV) or None


def tls_problem(url: str, exc: requests.exceptions.SSLError) -> ConnectionProblem:
    """One line for a failed TLS handshake, saying what to do."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ConnectionProblem(
            f"{url}: the server's TLS certificate is not trusted; give the CA that signed it with "
            f"--ca-bundle PATH or ${CA_BUNDLE_ENV}"
        )
    if "CERTIFICATE_REQUIRED" in text or "HANDSHAKE_FAILURE" in text:
        return _wants_client_certificate(url)
    return ConnectionProblem(f"{url}: the TLS handshake failed")


def _wants_client_certificate(url: str) -> ConnectionProblem:
    return ConnectionProblem(
        f"{url}: the server wants a client certificate; give one with --client-cert PATH or "
        f"${CLIENT_CERT_ENV}"
    )


def unreachable(url: str, exc: requests.ConnectionError, has_cert: bool) -> ConnectionProblem:
    """One line for a connection that failed. Under TLS 1.3 a server that requires a client certificate
    accepts the handshake and then closes the connection without a word: that is the likely cause."""
    if url.startswith("https://") and not has_cert and "closed connection without response" in str(exc):
        return _wants_client_certificate(url)
    return ConnectionProblem(f"cannot reach {url}: is the server running?")

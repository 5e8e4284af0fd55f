"""Run the app under uvicorn: JSON logs, and a drain that starts the moment SIGTERM arrives.

uvicorn stops accepting connections on SIGTERM, waits for open requests, then runs the app's lifespan
shutdown. Long-polls would hold that wait for up to a minute and the scheduler would keep starting jobs
meanwhile, so the signal also calls the app's `begin_shutdown` at once. With `tls_cert`/`tls_key` it
serves HTTPS (uvicorn's TLS); with `tls_client_ca` too, clients must present a certificate it signed.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from .app import create_app
from .config.settings import Settings
from .data.schedule import Refresher, first_snapshots
from .logs import configure_logging


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.on_exit()


def tls_options(settings: Settings) -> dict[str, object]:
    """uvicorn's TLS arguments from `[server]`; none for plain HTTP."""
    server = settings.server
    if server.tls_cert is None:
        return {}
    options: dict[str, object] = {"ssl_certfile": str(server.tls_cert), "ssl_keyfile": str(server.tls_key)}
    if server.tls_client_ca is not None:
        options.update(ssl_ca_certs=str(server.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; datasets get their first version first."""
    configure_logging(settings.server.log_level)
    for line in first_snapshots(settings):
        print(line, file=sys.stderr, flush=True)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        log_config=None,
        timeout_graceful_shutdown=max(1, int(settings.server.shutdown_grace_s)),
        **tls_options(settings),  # type: ignore[arg-type]
    )
    refresher = Refresher(settings).start()
    try:
        _Server(config, app.state.begin_shutdown).run()
    finally:
        refresher.stop()

"""A cluster job inside a network namespace of its own, run by tests/test_dask.py under `unshare --net`.

XGBoost's collective binds its ring sockets on the training workers to every interface (XGBoost 3.x has
no option for it), so a test cluster runs where loopback is the only interface there is, as
docs/deployment.md says. It brings that loopback up itself, over netlink with pyroute2 (the dev extra),
so no `ip` command is needed. Prints one JSON line: the namespace's interfaces, what listened while the job
trained, and the job's outcome.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import psutil
import xgboost as xgb
from distributed import Client, LocalCluster
from pyroute2 import IPRoute

from tests.serverproc import running, wait_until


def loopback_up() -> None:
    """A new network namespace's loopback starts down."""
    with IPRoute() as netlink:
        netlink.link("set", index=netlink.link_lookup(ifname="lo")[0], state="up")


def main() -> None:
    loopback_up()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
    ):
        base = Path(tmp)
        extra = f'\n[executor]\nkind = "dask"\nscheduler = "{cluster.scheduler_address}"\npartitions = 2\n'
        with running(base / "data", base / "server.log", {"alice": ["synthetic_rules"]}, extra) as server:
            job = server.client().submit(
                xgb.XGBClassifier(n_estimators=80, max_depth=5),
                {"dataset": "synthetic_rules", "label": "label"},
            )
            wait_until(lambda: job.refresh().progress.round > 0 or job.done, 180, "training rounds")
            with Client(cluster.scheduler_address) as client:
                pids = {os.getpid(), server.proc.pid, *client.run(os.getpid).values()}
            for pid in list(pids):
                pids |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
            listening = sorted(
                {
                    (c.laddr.ip, c.laddr.port)
                    for c in psutil.net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and c.pid in pids
                }
            )
            state = job.wait(timeout=600).state
    print(
        json.dumps(
            {"interfaces": [n for _, n in socket.if_nameindex()], "listening": listening, "state": state}
        )
    )


if __name__ == "__main__":
    sys.exit(main())

"""What the differencing guard, the ledger and the audit log add to a release (not a test).

Prints the time to check one new set against 1000 released sets of ~40k rows, to load 200 sets from
the ledger, and to append one audit entry; compare with the ~30 ms floor of a small job.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from pyroaring import BitMap

from remote_magic_server.audit import AuditLog
from remote_magic_server.privacy.guard import check_differencing
from remote_magic_server.release.ledger import Ledger


def main() -> None:
    rng = np.random.default_rng(0)

    def random_set() -> BitMap:
        return BitMap(np.flatnonzero(rng.random(50_000) < 0.8).astype(np.uint32))

    released = [random_set() for _ in range(1000)]
    start = time.perf_counter()
    check_differencing({"training": random_set()}, released, 50_000, 10)
    print(f"guard, one set vs 1000 released sets: {(time.perf_counter() - start) * 1e3:.1f} ms")
    print(f"one ~40k-row set serialized: {len(released[0].serialize())} bytes")
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        for i, rows in enumerate(released[:200]):
            ledger.record_sets("u", "t", f"job:{i}", {"training": rows})
        start = time.perf_counter()
        ledger.released_sets("u", "t")
        print(f"ledger, load 200 sets: {(time.perf_counter() - start) * 1e3:.1f} ms")
        log = AuditLog(Path(tmp) / "audit.log")
        start = time.perf_counter()
        for _ in range(1000):
            log.record("request", "u", method="GET", path="/v1/jobs/x", status=200)
        print(f"audit, one append: {(time.perf_counter() - start):.3f} ms")


if __name__ == "__main__":
    main()

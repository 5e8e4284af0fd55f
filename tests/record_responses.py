"""Record real server responses for the client's unit tests: `python -m tests.record_responses`.

Starts a real server on loopback, makes one request of each kind the client parses (and the error bodies
it maps), and writes method, path, status and JSON body to tests/recorded/responses.json. The unit tests
replay them without a server, so the client's parsing is tested fast and stays true to the wire."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import xgboost as xgb

from remote_magic import package_model
from tests.serverproc import USERS, running

OUT = Path(__file__).parent / "recorded" / "responses.json"


def record() -> list[dict]:
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "data").mkdir()
        with running(base / "data", base / "server.log", USERS) as server:

            def keep(name: str, method: str, path: str, user: str | None = "alice", **kwargs) -> dict:
                send = server.get if method == "GET" else server.post
                response = send(path, user=user, **kwargs)
                records.append(
                    {
                        "name": name,
                        "method": method,
                        "path": path,
                        "status": response.status_code,
                        "body": response.json(),
                    }
                )
                return response.json()

            keep("whoami", "GET", "/whoami")
            keep("datasets", "GET", "/datasets")
            keep("dataset", "GET", "/datasets/breast_cancer")
            spec = {"dataset": "breast_cancer", "label": "malignant"}
            files = {
                "model": (
                    "model.pkl",
                    package_model(xgb.XGBClassifier(n_estimators=3)),
                    "application/octet-stream",
                )
            }
            job = keep("submit", "POST", "/jobs", files=files, data={"spec": json.dumps(spec)})
            server.client().job(job["id"]).wait(timeout=120)
            keep("status", "GET", f"/jobs/{job['id']}")
            keep("result", "GET", f"/jobs/{job['id']}/result")
            keep("describe", "POST", "/describe", json=spec)
            keep("unauthorized", "GET", "/whoami", user=None)
            keep("unknown_dataset", "GET", "/datasets/nope")
            keep("invalid_derive", "POST", "/describe", json={**spec, "derive": {"r": "lower(mean_radius)"}})
            keep("not_found", "GET", "/jobs/0000000000000000")
    return records


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")

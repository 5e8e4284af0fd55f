"""The import boundaries of ARCHITECTURE.md hold: the API process never loads XGBoost or DuckDB (it
never trains and never reads rows), and the notebook side never loads server code."""

from __future__ import annotations

import subprocess
import sys


def modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_the_api_process_never_imports_xgboost_duckdb_or_the_worker():
    loaded = modules_after(
        "import remote_magic_server.cli, remote_magic_server.api.app, remote_magic_server.api.serving"
    )
    assert not {"xgboost", "duckdb", "sklearn"} & loaded
    assert not any(name.startswith("remote_magic_server.worker") for name in loaded)


def test_the_notebook_side_never_imports_server_code():
    loaded = modules_after(
        "import remote_magic, remote_magic.magics, remote_magic.client\n"
        "import remote_magic.dryrun, remote_magic.compare"
    )
    assert not any(name.startswith("remote_magic_server") for name in loaded)
    assert "remote_magic.client" in loaded

"""`%load_ext remote_magic` costs nothing until a magic is used: no heavy library is imported by it.

A fresh interpreter (a subprocess), since this test process has long since imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("xgboost", "pandas", "matplotlib", "duckdb", "pyarrow", "sklearn", "numpy", "pydantic", "requests")

PROBE = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
before = set(sys.modules)
shell.run_line_magic("load_ext", "remote_magic")
loaded = sorted({name.split(".")[0] for name in set(sys.modules) - before})
magics = sorted(shell.magics_manager.magics["cell"]) + sorted(shell.magics_manager.magics["line"])
print(json.dumps({"loaded": loaded, "magics": magics}))
"""


def probe() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_load_ext_imports_no_heavy_library():
    found = probe()
    assert "remote_magic" in found["loaded"]
    assert {"remote_train", "remote_evaluate", "remote_connect", "remote_describe"} <= set(found["magics"])
    assert [name for name in HEAVY if name in found["loaded"]] == []


def test_importing_the_client_loads_no_heavy_library():
    """The review's 9: `from remote_magic import Client` loaded matplotlib (through the registry's lineage
    view) and pandas, 1.8 s under load, for a script that only trains; they load where they are used."""
    code = (
        "import json, sys\nbefore = set(sys.modules)\nfrom remote_magic import Client\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in set(sys.modules) - before})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "remote_magic" in loaded and "requests" in loaded, "the client itself is imported"
    assert [
        name for name in ("matplotlib", "pandas", "xgboost", "duckdb", "pyarrow", "numpy") if name in loaded
    ] == []

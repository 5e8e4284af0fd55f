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

"""The walls of ARCHITECTURE.md hold, checked on the source and on what a process really imports:

- the API process never loads XGBoost, DuckDB or the worker package (it never trains, never reads rows);
- the notebook side never imports server code;
- the magics never talk HTTP (the client does);
- privacy/ does no I/O;
- worker/ never imports jobs/ or api/, and jobs/ and api/ never import worker/;
- data/ (sources, snapshots, versions) imports none of worker/, jobs/, api/, and the API process never
  loads a source's driver (refreshes run in a child interpreter);
- registry/ never imports api/ or automation/, automation/ never imports worker/ or release/;
- the release desk is the only caller of privacy/ rules in the server;
- no module is over about 300 lines without a reason written at its top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server" / "remote_magic_server"
CLIENT = ROOT / "remote_magic"
LONG_MODULE_LINES = 330


def modules_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, made absolute (relative imports resolved against its package)."""
    package = ".".join(
        path.relative_to(ROOT / ("server" if SERVER in path.parents else "")).with_suffix("").parts
    )
    package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_api_process_never_imports_xgboost_duckdb_or_the_worker():
    loaded = modules_after(
        "import remote_magic_server.cli, remote_magic_server.app, remote_magic_server.serving"
    )
    assert not {"xgboost", "duckdb", "sklearn", "adbc_driver_postgresql"} & loaded
    assert not any(name.startswith("remote_magic_server.worker") for name in loaded)
    readers = ("remote_magic_server.data.sources", "pyarrow.dataset")
    assert not any(name.startswith(readers) for name in loaded)


def test_the_notebook_side_never_imports_server_code():
    loaded = modules_after(
        "import remote_magic, remote_magic.magics.commands, remote_magic.client.api\n"
        "import remote_magic.client.dryrun, remote_magic.display.compare"
    )
    assert not any(name.startswith("remote_magic_server") for name in loaded)
    assert "remote_magic.client.api" in loaded
    for path in sources(CLIENT):
        assert not any(m.startswith("remote_magic_server") for m in imported_modules(path)), path


@pytest.mark.parametrize("path", sources(CLIENT / "magics"), ids=lambda p: p.name)
def test_the_magics_never_talk_http(path):
    imports = imported_modules(path)
    assert not {m for m in imports if m.split(".")[0] in ("requests", "urllib3", "httpx", "http")}


IO_MODULES = {"os", "io", "pathlib", "sqlite3", "socket", "subprocess", "shutil", "requests", "duckdb"}


@pytest.mark.parametrize("path", sources(SERVER / "privacy"), ids=lambda p: p.name)
def test_privacy_does_no_io(path):
    tree = ast.parse(path.read_text())
    assert not {m.split(".")[0] for m in imported_modules(path)} & IO_MODULES
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls and "print" not in calls


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("worker", ("remote_magic_server.jobs", "remote_magic_server.api", "remote_magic_server.release")),
        ("jobs", ("remote_magic_server.worker", "remote_magic_server.api", "remote_magic_server.automation")),
        ("api", ("remote_magic_server.worker",)),
        ("release", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
        ("privacy", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
        ("data", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
        (
            "registry",
            ("remote_magic_server.worker", "remote_magic_server.api", "remote_magic_server.automation"),
        ),
        ("automation", ("remote_magic_server.worker", "remote_magic_server.release")),
    ],
)
def test_each_folder_imports_only_down_the_chain(folder, forbidden):
    for path in sources(SERVER / folder):
        bad = {m for m in imported_modules(path) if m.startswith(forbidden)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_release_desk_is_the_only_caller_of_privacy_rules():
    callers = {
        path.relative_to(SERVER).as_posix()
        for path in sources(SERVER)
        if not path.is_relative_to(SERVER / "privacy")
        and any(m.startswith("remote_magic_server.privacy") for m in imported_modules(path))
    }
    assert callers == {"release/desk.py"}


@pytest.mark.parametrize("path", [*sources(CLIENT), *sources(SERVER)], ids=lambda p: p.name)
def test_long_modules_say_why_they_are_long(path):
    if len(path.read_text().splitlines()) <= LONG_MODULE_LINES:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "Why it is long" in docstring, f"{path.relative_to(ROOT)} is long without a reason at its top"

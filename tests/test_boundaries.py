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
- the server imports only the contract and the families of the notebook side (and its version);
- the confined worker never imports Dask or the cluster's code, and a cluster job's driver never
  imports the confined worker (the unpickler, the sandbox) or a model library;
- nothing outside families/ imports a model library;
- no two modules import each other, however far round (TYPE_CHECKING imports count too);
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
        ("worker", ("remote_magic_server.cluster", "dask", "distributed")),
        ("jobs", ("remote_magic_server.worker", "remote_magic_server.api", "remote_magic_server.automation")),
        ("api", ("remote_magic_server.worker",)),
        ("release", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
        ("privacy", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
        ("data", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
        (
            "registry",
            ("remote_magic_server.worker", "remote_magic_server.api", "remote_magic_server.automation"),
        ),
        (
            "automation",
            ("remote_magic_server.worker", "remote_magic_server.release", "remote_magic_server.api"),
        ),
        (
            "intake",
            ("remote_magic_server.worker", "remote_magic_server.api", "remote_magic_server.automation"),
        ),
        ("config", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
        ("cluster", ("remote_magic_server.worker", "remote_magic_server.jobs", "remote_magic_server.api")),
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


SERVER_MAY_IMPORT = ("remote_magic.contract", "remote_magic.families")
MODEL_LIBRARIES = ("xgboost", "sklearn", "lightgbm", "catboost", "torch")


def test_the_server_imports_only_the_contract_and_the_families():
    for path in sources(SERVER):
        client = {m for m in imported_modules(path) if m.split(".")[0] == "remote_magic"}
        bad = {m for m in client if m != "remote_magic" and not m.startswith(SERVER_MAY_IMPORT)}
        bad -= {"remote_magic.__version__"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_confined_worker_never_loads_dask():
    loaded = modules_after("import remote_magic_server.worker.preload, remote_magic_server.worker.main")
    assert "xgboost" in loaded  # the families' code is preloaded
    assert not {"dask", "distributed"} & {name.split(".")[0] for name in loaded}
    assert not any(name.startswith("remote_magic_server.cluster") for name in loaded)


def test_the_cluster_driver_names_no_model_library_and_nothing_outside_families_imports_one():
    """The server and the contract reach a model library only through a family (the worker's preload
    warms the families' libraries; the notebook's display may load a released model for its user)."""
    driver = imported_modules(SERVER / "cluster" / "driver.py")
    assert not {m for m in driver if m.split(".")[0] in MODEL_LIBRARIES}
    for path in [*sources(CLIENT / "contract"), *sources(SERVER)]:
        if path.name == "preload.py":
            continue
        found = {m for m in imported_modules(path) if m.split(".")[0] in MODEL_LIBRARIES}
        found = {m for m in found if not m.startswith("sklearn.datasets")}  # the demo's tables
        assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}"


def module_graph() -> dict[str, set[str]]:
    """Every module of both packages and the modules of both packages it imports (by any import)."""
    names: dict[str, Path] = {}
    for top, base in (("remote_magic", CLIENT), ("remote_magic_server", SERVER)):
        for path in sources(base):
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found = set()
        for module in imported_modules(path):
            while module and module not in names:
                module = module.rpartition(".")[0]
            if module and module != name:
                found.add(module)
        graph[name] = found
    return graph


def test_no_two_modules_import_each_other_however_far_round():
    graph = module_graph()
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(component)
    return found


def test_the_circle_check_finds_a_circle():
    assert [sorted(c) for c in strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()})] == [
        ["a", "b", "c"],
        ["d"],
    ]

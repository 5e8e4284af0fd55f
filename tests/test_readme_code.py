"""The README's code runs as written: every ```python block of README.md and docs/*.md, in order, on a real
kernel (nbclient) against a server of its own on the demo data, so a newcomer's first copy works.

A block not meant to run says so with `<!-- no-run: reason -->` on a line of its own before it.
"""

from __future__ import annotations

import re
from pathlib import Path

from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from tests.serverproc import USERS, running
from tests.test_saved_notebooks import KERNELSPEC, kernel_env

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- no-run: [^>]+-->\s*\n)?```python\n(.*?)```", re.S)


def blocks(page: Path) -> list[tuple[str, bool]]:
    """Each python block of a page, and whether it is meant to run."""
    return [(m.group(2), m.group(1) is None) for m in BLOCK.finditer(page.read_text())]


def test_every_python_block_is_found_and_marked_ones_are_skipped():
    found = {page.name: blocks(page) for page in PAGES}
    assert len(found["README.md"]) >= 4 and all(run for _, run in found["README.md"])
    assert [run for _, run in found["operating.md"]] == [False], "jupyterhub_config.py is not kernel code"


def test_the_readme_code_runs_as_written(tmp_path):
    sources = [(page.name, code) for page in PAGES for code, run in blocks(page) if run]
    notebook = new_notebook(cells=[new_code_cell(code) for _, code in sources], metadata=KERNELSPEC)
    with running(tmp_path / "data", tmp_path / "server.log", USERS) as server:
        client = NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True)
        client.resources = {"metadata": {"path": str(tmp_path)}}
        client.execute(env=kernel_env(server, REMOTE_MAGIC_PROGRESS="off"))
    failed = [
        f"{page}, block {i}: {o.ename}: {o.evalue}"
        for i, ((page, _), cell) in enumerate(zip(sources, notebook.cells))
        for o in cell.outputs
        if o.output_type == "error"
    ]
    assert failed == []
    trained = "\n".join(str(o.get("data", {})) for o in notebook.cells[1].outputs)
    assert "cost rho 0.06 (epsilon 1.62" in trained, "the first example trains with the DP trainer"
    bare = "\n".join(str(o.get("data", {})) for o in notebook.cells[2].outputs)
    assert "cost rho 0.06" in bare, "a bare XGBClassifier() trains as written"
    [derived] = [cell for cell in notebook.cells if '"derive": {' in cell.source]
    ranked = "\n".join(str(o.get("data", {})) for o in derived.outputs)
    assert re.search(r"'(bmi_per_age|older|log_income)'", ranked), "the derive example ranks derived columns"

"""papermill, where it is the subject: every example runs to its end against a real `remote-magic-server
serve --demo` process, as the README tells a newcomer to run them (05 and 07 start a server of their own
on their own table, as a data owner would), saving every figure with its picture, and a magic usage error
fails the run with its message in papermill's exception (not an empty one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from remote_magic.display.pictures import VEGALITE
from remote_magic_server.demo import free_port
from remote_magic_server.quickstart import wait_healthy
from tests.serverproc import wait_until
from tests.test_demo import PASTE

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.ipynb"))
KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


@pytest.fixture()
def kernel_env(server, monkeypatch):
    """The kernel papermill starts inherits this process's environment: point it at the test server."""
    monkeypatch.setenv("REMOTE_MAGIC_URL", server.url)
    monkeypatch.setenv("REMOTE_MAGIC_TOKEN", server.tokens["alice"])
    monkeypatch.setenv("REMOTE_MAGIC_PROGRESS", "off")


def figures(notebook) -> list[dict]:
    """The Vega-Lite specs the notebook's cells displayed."""
    return [
        output["data"][VEGALITE]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if VEGALITE in output.get("data", {})
    ]


def without_picture(notebook) -> list[str]:
    """The alt text of each figure saved without its SVG picture."""
    return [
        output["data"]["text/plain"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if VEGALITE in output.get("data", {}) and "image/svg+xml" not in output["data"]
    ]


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """`remote-magic-server serve --demo` on a free port: its URL and the token it printed."""
    folder = tmp_path_factory.mktemp("serve-demo")
    out = folder / "serve.out"
    with open(out, "wb") as sink:
        command = ["serve", "--demo", "--data-dir", str(folder / "data"), "--port", str(free_port())]
        proc = subprocess.Popen(
            [sys.executable, "-m", "remote_magic_server", *command],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def pasted():
            assert proc.poll() is None, out.read_text()[-3000:]
            return next(filter(None, map(PASTE.match, out.read_text().splitlines())), None)

        wait_until(pasted, 300, "serve --demo to print its line")
        url, token = pasted().groups()
        wait_healthy(url, timeout=300)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_to_the_end_against_serve_demo(example, demo_server, monkeypatch, tmp_path, capfd):
    url, token = demo_server
    monkeypatch.setenv("REMOTE_MAGIC_URL", url)
    monkeypatch.setenv("REMOTE_MAGIC_TOKEN", token)
    monkeypatch.setenv("REMOTE_MAGIC_PROGRESS", "off")
    monkeypatch.delenv("REMOTE_MAGIC_HOOK_PORT", raising=False)  # the example's own choice, as for a user
    executed = papermill.execute_notebook(
        str(example),
        str(tmp_path / example.name),
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    assert all(cell.get("execution_count") for cell in executed.cells if cell.cell_type == "code")
    text = outputs_text(executed)
    assert "Traceback" not in text
    # each cell waited for its pictures (the runner reads nothing after the last), and the kernel's
    # shutdown, which interrupts its process group, stopped the pictures' helper without a traceback
    assert not without_picture(executed)
    assert "Traceback" not in capfd.readouterr().err
    if example.stem == "02-dataset-specs":
        assert "unknown column 'bmii' in filter; did you mean 'bmi'?" in text
        admitted = re.search(r"admitted by the filter: (\d+)", text)
        assert admitted and int(admitted.group(1)) > 0, "the mock rows pass the docs' own filter"
    if example.stem == "08-several-owners":
        assert "30 trees, 3 round trips" in text and "pooled over the owners" in text
        assert text.count("rho 0.3 for 3 batches") == 6  # each owner's own charge, in the result and printed
    if example.stem == "07-flights-dp":
        assert "every count is noisy (differential privacy)" in text and "expected 95% intervals" in text
        assert re.search(r"ranking by auc \(higher is better\): depth [25] [~>] depth [25]", text)
        assert "[low, high]: 95% intervals" in text
        [metric] = [panel["hconcat"][-1] for panel in figures(executed) if "versus best" in str(panel)]
        assert {
            (row["run"], row["low"] is not None, row["high"] is not None) for row in metric["data"]["values"]
        } == {
            ("depth 2", True, True),
            ("depth 5", True, True),
        }
        assert "errorbar" in str(metric["layer"])
        assert "jobs charged: 2\nthe describe charged too: True\nspent + left = cap: True" in text


def test_a_usage_error_fails_papermill_with_its_message(kernel_env, tmp_path):
    notebook = new_notebook(
        cells=[
            new_code_cell("%load_ext remote_magic"),
            new_code_cell("%%remote_train --dataset synthetic\nmodel = {'params': {}}"),
            new_code_cell("print('not reached')"),
        ],
        metadata=KERNELSPEC,
    )
    nbformat.write(notebook, tmp_path / "usage.ipynb")
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(
            str(tmp_path / "usage.ipynb"),
            str(tmp_path / "out.ipynb"),
            kernel_name="python3",
            progress_bar=False,
        )
    assert failed.value.ename == "MagicUsageError"
    assert "UsageError: missing --label (or name a spec dict with --spec VAR)" in str(failed.value)
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert not executed.cells[2].get("outputs"), "the run stopped at the failed cell"

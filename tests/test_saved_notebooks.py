"""Notebooks executed on a real kernel through nbclient, as papermill and `jupyter nbconvert --execute` do:
what a saved notebook keeps (no progress leftovers), what a cell shows when no token prompt is possible,
what Ctrl-C leaves, and that `result.plot()` displays its figures."""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import datetime

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbformat.v4 import new_code_cell, new_notebook

from remote_magic.display.pictures import HEADLESS_WAIT
from tests.serverproc import wait_until
from tests.test_magics import wait_running

KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
VEGALITE = "application/vnd.vegalite.v5+json"
PROGRESS_ON = (
    "%load_ext remote_magic\n%config RemoteMagic.progress = True\n%config RemoteMagic.progress_delay = 0.0"
)
BAR = re.compile(r"(queued|starting|staging|training|evaluating): \d")


def local_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("REMOTE_MAGIC") and k != "CI"}


def kernel_env(server, **extra: str) -> dict[str, str]:
    token = server.tokens["alice"]
    return {**local_env(), "REMOTE_MAGIC_URL": server.url, "REMOTE_MAGIC_TOKEN": token, **extra}


def execute(cells: list[str], env: dict[str, str], tmp_path) -> nbformat.NotebookNode:
    notebook = new_notebook(cells=[new_code_cell(c) for c in cells], metadata=KERNELSPEC)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True)
    client.resources = {"metadata": {"path": str(tmp_path)}}
    client.execute(env=env)
    return notebook


def empty(output) -> bool:
    """An output that shows nothing: no text in any of its forms."""
    if output.output_type == "stream":
        return not output.text
    return output.output_type != "error" and not any(str(v).strip() for v in output.get("data", {}).values())


def errors(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "error"]


def test_without_a_token_the_cell_says_to_set_it_in_one_line(server, tmp_path):
    env = kernel_env(server)
    env.pop("REMOTE_MAGIC_TOKEN")
    notebook = execute(["%load_ext remote_magic", "%remote_connect", "%remote_datasets"], env, tmp_path)
    for cell in notebook.cells[1:]:
        [error] = errors(cell)
        assert error.ename == "MagicUsageError"
        assert error.traceback == [
            "UsageError: no token: set the environment variable REMOTE_MAGIC_TOKEN before connecting"
        ]


def test_a_saved_notebook_keeps_no_progress_leftovers(server, tmp_path):
    notebook = execute(
        [
            PROGRESS_ON,
            "%%remote_train -d synthetic -l label -o r\nfrom xgboost import XGBClassifier\n"
            "print('cell ran')\ndisplay('shown by the cell')\n"
            "model = XGBClassifier(n_estimators=40, max_depth=6, min_child_weight=3)",
            "%%remote_train -d breast_cancer -l malignant --where 'mean_radius > 27'\n"
            "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=3)",
        ],
        kernel_env(server),
        tmp_path,
    )
    trained, refused = notebook.cells[1], notebook.cells[2]
    assert not errors(trained) and errors(refused)[0].ename == "DisclosureRefused"
    for cell in (trained, refused):
        texts = [str(o.get("data", {})) + o.get("text", "") for o in cell.outputs]
        assert not any(WIDGET_MIME in o.get("data", {}) for o in cell.outputs), "no widget to lose"
        assert not any(BAR.search(t) or "remote-magic-progress" in t for t in texts), texts
    for cell in (trained, refused):  # the bar was shown, then cleared: no empty output is saved (rev4 L4)
        assert not [o for o in cell.outputs if empty(o)], cell.outputs
    assert len(trained.outputs) == 4 and len(refused.outputs) == 1, "the cell's two, result, figure; error"
    assert trained.outputs[3].data["text/plain"] == "Figures: metrics", "a default dp cell draws its metrics"
    assert trained.outputs[0].text == "cell ran\n", "the cell's own outputs stay, in their order"
    assert trained.outputs[1].data == {"text/plain": "'shown by the cell'"}
    assert any("remote-magic-result" in o.get("data", {}).get("text/html", "") for o in trained.outputs)
    nbformat.write(notebook, tmp_path / "saved.ipynb")
    page, _ = HTMLExporter().from_notebook_node(nbformat.read(tmp_path / "saved.ipynb", as_version=4))
    assert (
        "training:" not in page
        and "Error displaying widget" not in page
        and "remote-magic-progress" not in page
        and "<pre></pre>" not in page
    )


def test_interrupt_in_a_kernel_leaves_one_line_and_no_bar(server, tmp_path):
    notebook = new_notebook(
        cells=[
            new_code_cell(PROGRESS_ON),
            new_code_cell(
                "%%remote_train -d synthetic -l label\nfrom xgboost import XGBClassifier\n"
                "model = XGBClassifier(n_estimators=2000, max_depth=10, learning_rate=0.01,\n"
                "                      min_child_weight=3)"
            ),
        ],
        metadata=KERNELSPEC,
    )
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True)
    client.resources = {"metadata": {"path": str(tmp_path)}}
    before = {j.id for j in server.client().jobs(limit=50)}
    started: dict[str, str] = {}

    async def run() -> None:
        async with client.async_setup_kernel(env=kernel_env(server)):
            await client.async_execute_cell(notebook.cells[0], 0)
            cell = asyncio.ensure_future(client.async_execute_cell(notebook.cells[1], 1))
            started["job"] = await asyncio.to_thread(wait_running, server, before)
            training = lambda: server.client().job(started["job"]).status.progress.round > 1  # noqa: E731
            await asyncio.to_thread(wait_until, training, 300, "rounds for the bar to show")
            await client.km.interrupt_kernel()
            await cell

    asyncio.run(run())
    cell = notebook.cells[1]
    [error] = errors(cell)
    [line] = error.traceback  # one line, which says what the cancelled job cost (mode dp)
    charged = "its rows were admitted, so it was charged rho 0.06 of your privacy budget"  # DP training too
    assert re.fullmatch(
        rf"Interrupted: remote job {started['job']} was cancelled; {charged} \([\d.]+ left\)\.", line
    )
    assert [o.output_type for o in cell.outputs] == ["error"], "the bar was cleared with the error"
    assert server.client().job(started["job"]).wait(timeout=300).state == "cancelled"


def test_the_result_figures_are_a_spec_the_browser_draws_with_a_picture_for_saved_pages(server, tmp_path):
    notebook = execute(
        [
            "%load_ext remote_magic",
            "%%remote_train -d breast_cancer -l malignant --confusion\nfrom xgboost import XGBClassifier\n"
            "model = XGBClassifier(n_estimators=5, max_depth=2)",
            # a headless runner's cell has waited for its picture; a script's own wait still answers
            "from remote_magic import wait_for_pictures\nassert wait_for_pictures(timeout=300)",
            # a front end interrupts a cell by signalling the kernel's process group, the helper's too
            "import os, signal\nos.killpg(os.getpgid(0), signal.SIGINT)",
            "from remote_magic.display.pictures import show\n"
            "drawn = show({'mark': 'point'}, 'after an interrupt')",
        ],
        kernel_env(server, REMOTE_MAGIC_PROGRESS="off"),
        tmp_path,
    )
    table, figures = notebook.cells[1].outputs
    assert "remote-magic-result" in table.data["text/html"] and "<img" not in table.data["text/html"]
    spec = figures.data[VEGALITE]
    assert [chart["title"] for chart in spec["hconcat"]] == [
        "Learning curve",
        "Feature importance",
        "Confusion matrix (eval)",
    ]
    assert len(json.dumps(spec)) < 20_000, "a few KB of released numbers"
    assert figures.data["image/svg+xml"].lstrip().startswith("<svg"), "a saved page needs a picture"
    nbformat.write(notebook, tmp_path / "saved.ipynb")
    page, _ = HTMLExporter().from_notebook_node(nbformat.read(tmp_path / "saved.ipynb", as_version=4))
    assert 'data-mime-type="image/svg+xml"' in page, "nbconvert's HTML shows the picture"
    [interrupted] = errors(notebook.cells[3])
    [after] = notebook.cells[4].outputs
    assert interrupted.ename == "KeyboardInterrupt" and "image/svg+xml" in after.data, "the helper lives on"


def test_a_killed_helper_is_replaced_and_the_next_figures_get_their_pictures(tmp_path):
    # the helper dies (OOM, a crash, a signal) between two figure cells, or unnoticed just before a figure
    kill = "[helper] = multiprocessing.active_children()\nos.kill(helper.pid, signal.SIGKILL)"
    notebook = execute(
        [
            "import multiprocessing, os, signal\nfrom remote_magic.display.pictures import show\n"
            "show({'mark': 'point'}, 'first')",
            f"{kill}\nhelper.join()",
            "drawn = show({'mark': 'point'}, 'after the helper was killed')",
            kill + "\ndrawn = show({'mark': 'point'}, 'as the helper is killed')",
        ],
        local_env(),
        tmp_path,
    )
    for cell in notebook.cells[2:]:
        [figure] = cell.outputs
        assert figure.data["image/svg+xml"].lstrip().startswith("<svg"), "a fresh helper drew it"
        timing = cell.metadata.execution
        took = datetime.fromisoformat(timing["shell.execute_reply"]) - datetime.fromisoformat(
            timing["iopub.execute_input"]
        )
        assert took.total_seconds() < HEADLESS_WAIT / 2, "the cell did not wait out a picture never coming"


def test_plot_displays_the_figures_in_a_notebook(server, tmp_path):
    notebook = execute(
        [
            "%load_ext remote_magic",
            "%%remote_train -d breast_cancer -l malignant -o r\nfrom xgboost import XGBClassifier\n"
            "model = XGBClassifier(n_estimators=5, max_depth=2)",
            "r.plot()",
            "figures = r.plot()\nprint(type(figures['confusion matrix']).__name__, len(figures))",
        ],
        kernel_env(server, REMOTE_MAGIC_PROGRESS="off"),
        tmp_path,
    )
    [shown] = notebook.cells[2].outputs
    assert shown.output_type == "execute_result"
    assert shown.data["text/html"].count("<img class='remote-magic-plot'") == 3
    assert "<Figure" not in shown.data["text/plain"]
    assert notebook.cells[3].outputs[0].text == "Figure 3\n"

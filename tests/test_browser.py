"""The quickstart in a real JupyterLab, driven by Playwright with Debian's Chromium: the progress bar and
the result panel must render, and the saved notebook, reopened, must carry no progress leftover (no
"Error displaying widget", no frozen bar). Screenshots of the progress bar, the result panel and a
describe table are kept under test-artifacts/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from remote_magic_server.demo import free_port
from tests.serverproc import wait_until

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SLOW_CELL = (
    "%%remote_train --dataset synthetic_rules --label label -o slow\n"
    "from xgboost import XGBClassifier\n"
    "model = XGBClassifier(n_estimators=300, max_depth=7, learning_rate=0.05, min_child_weight=3)"
)
DESCRIBE_CELL = (
    "%remote_describe --dataset synthetic --label label --features age,bmi,region,smoker,visits "
    "--where \"age >= 40 AND region IN ('north', 'south', 'east')\""
)
# Every cell attached to the page (so a leftover anywhere is seen), and no news toast over screenshots.
LAB_SETTINGS = {
    "notebook-extension/tracker": {"windowingMode": "none"},
    "apputils-extension/notification": {"fetchNews": "false"},
}
LEFTOVERS = ("Error displaying widget", "training:", "queued:", "starting:")


@pytest.fixture()
def lab(server, tmp_path):
    """JupyterLab on loopback serving a copy of the quickstart with one slower job appended."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install Debian's chromium (.ci/run does)")
        pytest.skip("Chromium is not installed: apt-get install chromium")
    notebook = json.loads((ROOT / "examples" / "01-quickstart.ipynb").read_text())
    for source in (SLOW_CELL, DESCRIBE_CELL):
        notebook["cells"].append(
            {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None}
        )
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (tmp_path / "quickstart.ipynb").write_text(json.dumps(notebook))
    for plugin, values in LAB_SETTINGS.items():
        path = tmp_path / "lab-settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), "browser-test-token"
    env = {
        **os.environ,
        "REMOTE_MAGIC_URL": server.url,
        "REMOTE_MAGIC_TOKEN": server.tokens["alice"],
        "REMOTE_MAGIC_PROGRESS": "on",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--allow-root",
        ],
        env=env,
        stdout=open(tmp_path / "lab.log", "wb"),  # noqa: SIM115 - open for the process lifetime
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{base}/api/status", params={"token": token}, timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_until(answers, 300, "JupyterLab to answer", every=0.3)
    except AssertionError:
        proc.kill()
        pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
    yield f"{base}/lab/tree/quickstart.ipynb?token={token}", tmp_path / "quickstart.ipynb"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _open(page, url: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=300_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=300_000)
    select = page.locator(".jp-Dialog button", has_text="Select")
    try:
        select.first.wait_for(state="visible", timeout=10_000)
        select.first.click()
    except PlaywrightTimeout:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=300_000)


def _outputs_text(page) -> str:
    return "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())


def test_quickstart_renders_progress_and_result_and_saves_without_leftovers(lab):
    from playwright.sync_api import sync_playwright

    url, saved = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            _open(page, url)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            page.wait_for_function(
                "[...document.querySelectorAll('.jp-OutputArea-output .remote-magic-progress')]"
                ".some(e => /training\\s*[1-9][0-9]*\\/300/.test(e.innerText)"
                " && (e.scrollIntoView({block: 'center'}) || true))",
                timeout=600_000,
            )
            page.screenshot(path=str(ARTIFACTS / "browser-progress.png"))
            page.wait_for_selector(".jp-OutputArea-output .remote-magic-describe", timeout=1_800_000)
            results = page.locator(".jp-OutputArea-output .remote-magic-result")
            assert results.count() == 2
            charts = page.locator(".jp-OutputArea-output .vega-embed")
            charts.nth(1).locator(".marks").wait_for(timeout=60_000)
            assert charts.count() == 2, "each result's figures, drawn by the browser"
            assert "binary classifier on synthetic" in results.first.inner_text()
            assert page.locator("[data-mime-type='application/vnd.jupyter.error']").count() == 0
            assert page.locator(".remote-magic-progress").count() == 0, "the bar is gone once the job is done"
            results.nth(1).scroll_into_view_if_needed()
            results.nth(1).screenshot(path=str(ARTIFACTS / "browser-result.png"))
            charts.nth(1).scroll_into_view_if_needed()
            charts.nth(1).screenshot(path=str(ARTIFACTS / "browser-figures.png"))
            describe = page.locator(".jp-OutputArea-output .remote-magic-describe")
            assert describe.locator(".remote-magic-histogram").count() == 4
            assert describe.locator(".remote-magic-categories").count() == 1
            describe.scroll_into_view_if_needed()
            describe.screenshot(path=str(ARTIFACTS / "browser-describe.png"))

            page.keyboard.press("Control+s")
            page.wait_for_function("!document.querySelector('.jp-mod-current.jp-mod-dirty')", timeout=300_000)
            page.wait_for_timeout(1000)
            _open(page, url)
            page.wait_for_selector(".jp-OutputArea-output .remote-magic-result", timeout=300_000)
            page.wait_for_timeout(2000)
            shown = _outputs_text(page)
            for leftover in LEFTOVERS:
                assert leftover not in shown, leftover
            assert page.locator(".remote-magic-progress, .widget-hprogress").count() == 0
            reopened = page.locator(".jp-OutputArea-output .remote-magic-result")
            assert reopened.count() == 2
            drawn = page.locator(".jp-OutputArea-output .vega-embed")
            drawn.nth(1).locator(".marks").wait_for(timeout=60_000)
            assert drawn.count() == 2, "the saved figures are drawn again on reopening"
            reopened.nth(1).scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "browser-reopened.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
            raise
        finally:
            browser.close()
    on_disk = saved.read_text()
    assert (
        "application/vnd.jupyter.widget-view+json" not in on_disk and "remote-magic-progress" not in on_disk
    )
    pictures = [
        output["data"]
        for cell in json.loads(on_disk)["cells"]
        for output in cell.get("outputs", [])
        if "application/vnd.vegalite.v5+json" in output.get("data", {})
    ]
    assert len(pictures) == 2 and all("image/svg+xml" in data for data in pictures), "GitHub needs a picture"

"""The quickstart in a real JupyterLab, driven by Playwright with Debian's Chromium: the progress bar (an
ipywidget) and the result panel must render. Screenshots are kept under test-artifacts/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from remote_magic_server.demo import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SLOW_CELL = (
    "%%remote_train --dataset synthetic --label label -o slow\n"
    "from xgboost import XGBClassifier\n"
    "model = XGBClassifier(n_estimators=300, max_depth=7, learning_rate=0.05)"
)


@pytest.fixture()
def lab(server, tmp_path):
    """JupyterLab on loopback serving a copy of the quickstart with one slower job appended."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI must install Debian's chromium (.ci/run does)")
        pytest.skip("no /usr/bin/chromium here")
    notebook = json.loads((ROOT / "examples" / "01-quickstart.ipynb").read_text())
    notebook["cells"].append(
        {"cell_type": "code", "metadata": {}, "source": SLOW_CELL, "outputs": [], "execution_count": None}
    )
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (tmp_path / "quickstart.ipynb").write_text(json.dumps(notebook))
    port, token = free_port(), "browser-test-token"
    env = {
        **os.environ,
        "REMOTE_MAGIC_URL": server.url,
        "REMOTE_MAGIC_TOKEN": server.tokens["alice"],
        "REMOTE_MAGIC_PROGRESS": "on",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/api/status", params={"token": token}, timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
    yield f"{base}/lab/tree/quickstart.ipynb?token={token}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_quickstart_renders_progress_bar_and_result_panel_in_jupyterlab(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

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
            page.goto(lab)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            select = page.locator(".jp-Dialog button", has_text="Select")
            try:
                select.first.wait_for(state="visible", timeout=10_000)
                select.first.click()
            except PlaywrightTimeout:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            bar = page.locator(
                ".jp-OutputArea-output .widget-hprogress, .jp-OutputArea-output .widget-progress"
            )
            bar.first.wait_for(state="visible", timeout=60_000)
            page.wait_for_function(
                "[...document.querySelectorAll('.jp-OutputArea-output .widget-hprogress')]"
                ".some(e => /training:\\s*[1-9][0-9]*\\/300/.test(e.closest('.widget-hbox').innerText)"
                " && (e.scrollIntoView({block: 'center'}) || true))",
                timeout=120_000,
            )
            page.screenshot(path=str(ARTIFACTS / "browser-progress.png"))
            results = page.locator(".jp-OutputArea-output .remote-magic-result")
            page.wait_for_function(
                "document.querySelectorAll('.jp-OutputArea-output .remote-magic-result').length >= 2",
                timeout=180_000,
            )
            assert results.nth(1).locator("img.remote-magic-plot").count() == 3
            assert "binary classifier on synthetic" in results.first.inner_text()
            assert page.locator("[data-mime-type='application/vnd.jupyter.error']").count() == 0
            results.nth(1).scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-result.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
            raise
        finally:
            browser.close()

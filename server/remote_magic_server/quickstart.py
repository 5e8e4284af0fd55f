"""The headless quickstart (`remote-magic-server demo`): a demo server on a free loopback port, the
quickstart notebook executed against it on a real kernel, and the aggregate results it printed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .demo import demo_settings, free_port

LOG_NAME = "server.log"


def find_notebook(name: str = "01-quickstart.ipynb") -> Path:
    """The example notebook: beside the source tree (editable install) or inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "examples" / name, here / "examples" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"example notebook {name} not found")


class ServerStopped(RuntimeError):
    """The demo's server exited before it answered: its log says why."""


def wait_healthy(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Wait for the server at `url` to answer; with `process`, stop waiting as soon as it exits."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerStopped(f"the demo server exited at start-up (code {process.returncode})")
        try:
            if requests.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server at {url} did not become healthy in {timeout:.0f} s")


def result_text(notebook) -> list[str]:
    """The text of the outputs of cells tagged `result`: what the demo prints."""
    texts = []
    for cell in notebook.cells:
        if cell.cell_type != "code" or "result" not in cell.metadata.get("tags", []):
            continue
        for output in cell.outputs:
            if output.output_type == "stream":
                texts.append(output.text.rstrip())
            elif "data" in output and "text/plain" in output.data:
                texts.append(output.data["text/plain"].rstrip())
    return texts


def run_quickstart(output_dir: Path, data_dir: Path) -> list[str]:
    """Start a demo server on a free loopback port, execute the quickstart notebook on a real kernel,
    save it under output_dir, stop the server; return the aggregate results it printed. The server's and
    the kernel's own logs go to output_dir/server.log, so the demo prints only the results."""
    import sys

    import nbformat
    from nbclient import NotebookClient

    from .jobs.store import Store

    settings = demo_settings(data_dir)
    store = Store(settings.db_path, settings.jobs_dir)
    token = store.issue_token("demo", list(settings.datasets))
    store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / LOG_NAME, "ab") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "remote_magic_server",
                "serve",
                "--demo",
                "--no-token",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                wait_healthy(url, process=server)
            except ServerStopped as stopped:
                raise ServerStopped(f"{stopped}; its log: {output_dir / LOG_NAME}") from None
            os.environ.update(
                {"REMOTE_MAGIC_URL": url, "REMOTE_MAGIC_TOKEN": token, "REMOTE_MAGIC_PROGRESS": "off"}
            )
            notebook = nbformat.read(find_notebook(), as_version=4)
            resources = {"metadata": {"path": str(output_dir)}}
            NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute(
                stdout=log, stderr=log
            )
            nbformat.write(notebook, output_dir / "01-quickstart.ipynb")
            return result_text(notebook)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()

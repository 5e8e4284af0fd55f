"""Notebooks under nbval: a failed remote job must fail its cell, with a short message and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_notebook


def test_a_failed_remote_job_fails_the_nbval_cell(server, tmp_path):
    notebook = new_notebook(
        cells=[
            new_code_cell("%load_ext remote_magic"),
            new_code_cell(
                "%%remote_train -d breast_cancer_rules -l malignant --where 'mean_radius > 27'\n"
                "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=3)"
            ),
            new_code_cell("print('the next cell still runs')"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(notebook, tmp_path / "failing.ipynb")
    env = {
        **os.environ,
        "REMOTE_MAGIC_URL": server.url,
        "REMOTE_MAGIC_TOKEN": server.tokens["alice"],
        "REMOTE_MAGIC_PROGRESS": "off",
        "_REMOTE_MAGIC_TEST_ENV": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "-q",
            "failing.ipynb",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 2 passed" in out, out
    assert "DisclosureRefused" in out and "cohort" in out
    assert "Traceback (most recent call last)" not in out
    assert server.tokens["alice"] not in out

"""What a newcomer sees by default, against the real server (rev4 L2, L8, L9): a default cell in mode dp
draws the metrics it released, `plot()` with nothing more to draw says what to ask for, the catalog marks
a noisy row count as noisy, `Client.cost` reads as sentences, and `Client.train` in a script run in a
terminal shows the magic's progress bar (and nothing in a log)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap

import pytest
import xgboost as xgb
from IPython.utils.capture import capture_output

from remote_magic.display.pictures import VEGALITE
from remote_magic.display.result import TrainResult
from tests.test_magics import run

DEFAULT_CELL = (
    "%%remote_train -d synthetic -l label --eval-fraction 0.2 --seed 11 -o plain\n"
    "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=4, max_depth=2)"
)


def test_a_default_dp_cell_draws_its_released_metrics_with_their_intervals(shell):
    """It showed tables only, and `plot()` an empty `Figures()` that said nothing."""
    with capture_output() as shown:
        run(shell, DEFAULT_CELL)
    result = shell.user_ns["plain"]
    [table, figures] = [o for o in shown.outputs if "text/plain" in o.data]
    assert "remote-magic-result" in table.data["text/html"]
    assert figures.data["text/plain"] == "Figures: metrics"
    [chart] = figures.data[VEGALITE]["hconcat"]
    assert chart["title"] == "Metrics (eval), 95% intervals"
    drawn = {row["metric"]: (row["low"], row["value"], row["high"]) for row in chart["data"]["values"]}
    released = {name: (lo, result.metrics[name], hi) for name, (lo, hi) in result.intervals.items()}
    assert drawn == {name: v for name, v in released.items() if v[1] is not None} and drawn
    figures = result.plot()
    assert list(figures) == ["metrics"] and len(figures["metrics"].axes) == len(drawn)
    assert "--curve K" in repr(figures) and "--confusion" in repr(figures), repr(figures)


def test_plot_with_nothing_to_draw_says_in_one_line_what_to_ask_for(shell):
    run(shell, DEFAULT_CELL)
    raw = shell.user_ns["plain"].raw.model_copy(deep=True)
    raw.metrics = dict.fromkeys(raw.metrics)  # nothing released that could be drawn
    figures = TrainResult(raw).plot()
    said = repr(figures)
    assert len(figures) == 0 and "\n" not in said, said
    assert said.startswith("Figures(): Not released by this job: ask with --curve K")
    assert "budget" in said and figures._repr_html_().count("--curve K") == 1
    assert TrainResult(raw).charts() is None, "and no empty figure in the notebook"


def test_the_catalog_marks_a_noisy_row_count_as_noisy(server, shell):
    """A mode-dp dataset's row count (49,993) looked like the table's size."""
    rows = {line.split()[0]: line for line in repr(server.client().datasets()).splitlines()[2:]}
    assert re.search(r"  ~\d[\d,]* \(noisy\)  ", rows["synthetic"]), rows["synthetic"]
    assert re.search(r"  ~\d[\d,]* \(noisy\)  ", rows["synthetic_eval_only"])
    assert "50,000 " in rows["synthetic_rules"] and "noisy" not in rows["synthetic_rules"]
    assert server.client().datasets()[0].name == "synthetic", "still a list of DatasetInfo"
    table = run(shell, "%remote_datasets")
    assert "(noisy)" in table._repr_html_() and "(noisy)" in repr(table)
    versions = run(shell, "%remote_datasets synthetic --versions")
    assert "(noisy)" in repr(versions)


def test_a_cost_prints_as_sentences_not_a_field_list(server):
    spec = {"dataset": "synthetic", "label": "label"}
    cost = server.client().cost(xgb.XGBClassifier(n_estimators=20), spec)
    printed = str(cost)
    assert printed == repr(cost) and "rho_train=" not in printed, printed
    lines = printed.splitlines()
    assert lines[0] == "Cost of a training job on synthetic (mode dp), before anything is spent"
    assert lines[1].startswith(f"cost if submitted: rho {cost.rho:g} (epsilon ")
    assert f"training rho {cost.rho_train:g}" in lines[1] and f"evaluation rho {cost.rho_eval:g}" in lines[1]
    assert f"budget left after it: rho {cost.rho_remaining_after:.4g}" in lines[1]
    assert any(line.startswith("expected 95% intervals for about ") for line in lines)
    assert "DP training: 20 trees" in printed
    assert "<li>cost if submitted: rho" in cost._repr_html_()
    assert cost.rho_train > 0 and cost.expected, "still the wire model's fields"


SCRIPT = textwrap.dedent(
    """
    import sys
    from remote_magic import Client
    from xgboost import XGBClassifier
    spec = {"dataset": "synthetic_rules", "label": "label", "eval": {"fraction": 0.2, "seed": 5}}
    asked = {"progress": False} if sys.argv[1] == "off" else {}
    Client().train(XGBClassifier(n_estimators=300, max_depth=6), spec, **asked)
    print("done", file=sys.stderr)
    """
)
FRAME = re.compile(r"(queued|starting|staging|training|evaluating): \d+/(\d+|\?) \|")


def _script_stderr(server, mode: str, terminal: bool) -> str:
    """What the script wrote to stderr, a pseudo-terminal of 120 columns or a pipe (a log, CI)."""
    env = {**os.environ, "REMOTE_MAGIC_URL": server.url, "REMOTE_MAGIC_TOKEN": server.tokens["alice"]}
    env.pop("REMOTE_MAGIC_PROGRESS", None)
    command = [sys.executable, "-c", SCRIPT, mode]
    if not terminal:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True)
        return done.stderr
    reader, writer = pty.openpty()
    os.set_blocking(reader, True)
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=writer, stderr=writer)
    os.close(writer)
    out = b""
    while True:
        try:
            chunk = os.read(reader, 65536)
        except OSError:  # the script ended and closed its side
            break
        if not chunk:
            break
        out += chunk
    os.close(reader)
    assert process.wait(timeout=300) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


@pytest.mark.parametrize(
    ("mode", "terminal", "bar"), [("default", True, True), ("default", False, False), ("off", True, False)]
)
def test_client_train_in_a_script_shows_the_magics_progress_only_in_a_terminal(server, mode, terminal, bar):
    """rev4's long.py showed nothing through a 12 s job; a bar in a log or CI would be a line per
    refresh, so a pipe gets none, nor does `progress=False`."""
    said = _script_stderr(server, mode, terminal)
    frames = [frame for frame in re.split(r"[\r\n]", said) if FRAME.search(frame)]
    assert said.rstrip().endswith("done")
    if bar:
        assert any("training: " in frame and "/300 |" in frame for frame in frames), said[-2000:]
    else:
        assert frames == [] and "\r" not in said.replace("\r\n", "\n"), said[-2000:]  # a terminal's newline

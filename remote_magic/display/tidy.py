"""A cell that showed a progress line leaves no empty output in the saved notebook.

Jupyter cannot remove one output: an emptied progress display stays in the saved file as an empty
output (an empty `<pre></pre>` in nbconvert's HTML). So, while a magic runs in a kernel, what the cell
shows (its text and its displays, the progress lines left out) is recorded as it goes out; if a progress
line was shown, the cell's outputs are cleared at its next output (`clear_output(wait=True)`: the result
or the error) and the recorded ones are shown again, in their order.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

PROGRESS_MARK = "remote_magic_progress"  # in a progress display's metadata


class _Recorder:
    def __init__(self) -> None:
        self.outputs: list[tuple[str, object]] = []
        self.progress_shown = False

    def display(self, msg: dict) -> dict:
        """The display publisher's hook: note the message and send it on unchanged."""
        if msg.get("msg_type") == "display_data":
            content = msg.get("content", {})
            if PROGRESS_MARK in content.get("metadata", {}):
                self.progress_shown = True
            else:
                self.outputs.append(("display", content))
        return msg


class _Tee:
    """A stream that writes through and keeps a copy of what was written."""

    def __init__(self, stream: TextIO, name: str, recorder: _Recorder) -> None:
        self.stream, self.name, self.recorder = stream, name, recorder

    def write(self, text: str) -> int:
        self.recorder.outputs.append((self.name, text))
        return self.stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


@contextmanager
def tidy_outputs(enabled: bool = True) -> Iterator[None]:
    """Around a magic that may show a progress line: see the module's docstring. Outside a kernel (or
    with progress off) it does nothing."""
    from IPython import get_ipython

    shell = get_ipython()
    publisher = getattr(shell, "display_pub", None)
    if not enabled or getattr(shell, "kernel", None) is None or not hasattr(publisher, "register_hook"):
        yield
        return
    recorder = _Recorder()
    out, err = sys.stdout, sys.stderr
    publisher.register_hook(recorder.display)
    sys.stdout, sys.stderr = _Tee(out, "stdout", recorder), _Tee(err, "stderr", recorder)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        publisher.unregister_hook(recorder.display)
        if recorder.progress_shown:
            _show_again(recorder.outputs, out, err)


def _show_again(outputs: list[tuple[str, object]], out: TextIO, err: TextIO) -> None:
    from IPython.display import clear_output, publish_display_data

    clear_output(wait=True)
    for kind, content in outputs:
        if kind == "display":
            shown: dict = content  # type: ignore[assignment]
            publish_display_data(data=shown.get("data", {}), metadata=shown.get("metadata", {}))
        else:
            (out if kind == "stdout" else err).write(content)  # type: ignore[arg-type]
    out.flush()
    err.flush()

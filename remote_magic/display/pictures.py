"""The SVG picture beside each Vega-Lite figure, drawn by a helper process, for readers that run no Vega.

A front end draws a figure's spec in the browser; a saved notebook read where nothing runs Vega
(nbconvert's HTML, GitHub, nbviewer) needs a picture, which `vl-convert-python` draws without a browser
(50-300 ms, as long as the job) in a helper process, so that the cell answers first. Two kinds of front end
read the update differently:
- an interactive one (JupyterLab, Notebook 7, VS Code) routes it to the figure's cell even after that cell
  answered, so nothing waits;
- a headless runner (nbclient, hence papermill and `nbconvert --execute`) reads a cell's messages only
  until the cell answers, and nothing after the last cell: a cell it runs waits for its pictures before
  answering. Such a runner is known by its requests' `allow_stdin` false (it can answer no `input()`).
Waiting at kernel shutdown instead would not do: the runner has stopped reading by then.
A picture is a copy for readers: a figure the helper cannot draw keeps its spec alone, never an error in the
cell nor a headless cell waiting out HEADLESS_WAIT, and a helper that died is replaced at the next figure.

This module imports nothing heavy at its top: the helper imports it to draw, and starts sooner for it.
"""

from __future__ import annotations

import contextvars
import multiprocessing
import signal
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

VEGALITE = "application/vnd.vegalite.v5+json"
HEADLESS_WAIT = 60.0  # seconds a headless runner's cell waits for its pictures (the first starts the helper)


def svg(spec: dict) -> str:
    """The spec drawn as SVG without a browser (runs in the helper process)."""
    import vl_convert

    return vl_convert.vegalite_to_svg(spec)


def display_with_figures(text: str, page: str, spec: dict | None, alt: str) -> None:
    """An object's text and HTML faces, then its figures (`_ipython_display_`: two outputs, since a front
    end shows one MIME type of a bundle and the figures must not hide the tables)."""
    from IPython.display import display

    display({"text/plain": text, "text/html": page}, raw=True)
    if spec is not None:
        show(spec, alt)


def show(spec: dict, alt: str) -> threading.Event | None:
    """Display the spec now (the front end draws it), then add its SVG to the same display once the helper
    has drawn it; a terminal (no kernel, nothing saved) gets no picture. Returns an event set once the
    picture is in.

    The drawing runs in a process of its own because the renderer holds the GIL: in a thread of the kernel
    it would delay the cell's answer by as long. The update goes twice: under the cell that showed the
    figure (JupyterLab routes it there, even after the cell finished) and under the cell running now
    (nbclient reads only the running cell's messages, and updates a display id wherever it is)."""
    from IPython import get_ipython
    from IPython.display import display, update_display

    display_id = uuid.uuid4().hex
    display({VEGALITE: spec, "text/plain": alt}, raw=True, display_id=display_id)
    shell = get_ipython()
    if getattr(shell, "kernel", None) is None:
        return None
    _wait_in_headless_cells(shell)
    shown_in = contextvars.copy_context()
    drawn = threading.Event()
    _pending.add(drawn)

    def add_picture(picture: str | None) -> None:
        try:
            if picture is not None:
                bundle = {VEGALITE: spec, "image/svg+xml": picture, "text/plain": alt}
                shown_in.run(update_display, bundle, raw=True, display_id=display_id)
                update_display(bundle, raw=True, display_id=display_id)
        finally:
            drawn.set()
            _pending.discard(drawn)

    _draw(spec, add_picture)
    return drawn


def wait_for_pictures(timeout: float | None = None) -> bool:
    """Wait until every figure shown so far has its picture; False on timeout. A headless run needs no
    call (each of its cells waits for its own), but a script or a front end of its own may."""
    return all(event.wait(timeout) for event in list(_pending))


_pending: set[threading.Event] = set()
_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()
_hooked = False


def _renderer() -> ProcessPoolExecutor:
    """One helper process, started on first use and kept (its JavaScript engine takes seconds to start)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
            )
        return _pool


def _draw(spec: dict, then: Callable[[str | None], None], retry: bool = True) -> None:
    """Have the helper draw the spec, then call `then` with the SVG, or with None where it cannot be drawn:
    `then` is called in every case, or a headless cell would wait out HEADLESS_WAIT. A helper that died
    breaks its pool, which says so at the submit or only in the future; the pool is dropped and a fresh
    helper tried once."""
    pool = _renderer()

    def drawn(future: Future) -> None:
        try:
            picture = future.result()
        except BrokenProcessPool:
            _drop(pool)
            if retry:
                _draw(spec, then, retry=False)
            else:
                then(None)
        except Exception:
            then(None)
        else:
            then(picture)

    try:
        future = pool.submit(svg, spec)
    except Exception as error:  # a broken pool may say so here already
        future = Future()
        future.set_exception(error)
    future.add_done_callback(drawn)


def _drop(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool, unless another figure has replaced it already; the next figure starts a
    fresh helper."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None


def _ignore_interrupts() -> None:
    """The helper ignores SIGINT: it shares the kernel's process group, which a front end interrupts to
    stop a cell, and jupyter_client at every kernel shutdown; the helper stops when the kernel's pool
    tells it to (at exit), and an interrupt would print a traceback and break the pool for later figures."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_in_headless_cells(shell: object) -> None:
    """Once (a kernel has one shell): after each cell, before it answers, wait for its pictures if a
    headless runner asked for it (see the module's docstring)."""
    global _hooked
    with _lock:
        if _hooked:
            return
        _hooked = True

    def wait_if_headless() -> None:
        request = shell.kernel.get_parent("shell")  # type: ignore[attr-defined]
        if _pending and not request.get("content", {}).get("allow_stdin", True):
            wait_for_pictures(HEADLESS_WAIT)

    shell.events.register("post_execute", wait_if_headless)  # type: ignore[attr-defined]

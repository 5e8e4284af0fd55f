"""The worker process's target. Kept free of imports so the forkserver can preload it cheaply and the
parent never has to import the worker package to name it."""

from __future__ import annotations

import importlib


def run_by_name(module: str, function: str, *args: object) -> None:
    """Import `module` in the child and call `function`: the parent names the worker, never imports it."""
    getattr(importlib.import_module(module), function)(*args)

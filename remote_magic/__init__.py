"""remote-magic, the notebook side: magics and a client to train XGBoost models on hidden data.

`%load_ext remote_magic` registers the magics; `remote_magic.Client` does the same from a script.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names load on first use (PEP 562), so that importing `remote_magic.wire` (as the server
# does) does not pull in the client, pandas and matplotlib.
_LAZY = {
    "Client": "client",
    "Job": "client",
    "package_model": "payload",
    "Comparison": "compare",
    "compare": "compare",
    "DryRun": "dryrun",
    "dry_run": "dryrun",
    "DryRunError": "errors",
    "RemoteError": "errors",
    "RemoteMagicError": "errors",
    "TrainResult": "result",
    "DatasetSpec": "wire",
}

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .client import Client, Job
    from .compare import Comparison, compare
    from .dryrun import DryRun, dry_run
    from .errors import DryRunError, RemoteError, RemoteMagicError
    from .payload import package_model
    from .result import TrainResult
    from .wire import DatasetSpec


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Client",
    "Comparison",
    "DatasetSpec",
    "DryRun",
    "DryRunError",
    "Job",
    "RemoteError",
    "RemoteMagicError",
    "TrainResult",
    "compare",
    "dry_run",
    "load_ipython_extension",
    "package_model",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: InteractiveShell) -> None:
    from .magics import RemoteMagic

    magic = RemoteMagic(ipython)
    ipython.register_magics(magic)
    ipython.user_ns.setdefault("_remote_magic", magic)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    magic = ipython.user_ns.pop("_remote_magic", None)
    if magic is not None and magic in ipython.configurables:
        ipython.configurables.remove(magic)

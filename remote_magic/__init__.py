"""remote-magic, the notebook side: magics and a client to train XGBoost models on hidden data.

`%load_ext remote_magic` registers the magics; `remote_magic.Client` does the same from a script.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names load on first use (PEP 562), so that importing `remote_magic.contract` (as the server
# does) does not pull in the client, pandas and matplotlib.
_LAZY = {
    "Client": "client.api",
    "Job": "client.job",
    "package_model": "contract.payload",
    "Comparison": "display.compare",
    "compare": "display.compare",
    "DryRun": "client.dryrun",
    "dry_run": "client.dryrun",
    "DryRunError": "client.errors",
    "RemoteError": "client.errors",
    "RemoteMagicError": "client.errors",
    "TrainResult": "display.result",
    "DatasetSpec": "contract.wire",
    "wait_for_pictures": "display.pictures",
    "federated_train": "client.federated",
    "FederatedError": "client.errors",
}

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .client.api import Client
    from .client.dryrun import DryRun, dry_run
    from .client.errors import DryRunError, FederatedError, RemoteError, RemoteMagicError
    from .client.federated import federated_train
    from .client.job import Job
    from .contract.payload import package_model
    from .contract.wire import DatasetSpec
    from .display.compare import Comparison, compare
    from .display.pictures import wait_for_pictures
    from .display.result import TrainResult


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
    "FederatedError",
    "Job",
    "RemoteError",
    "RemoteMagicError",
    "TrainResult",
    "compare",
    "dry_run",
    "federated_train",
    "load_ipython_extension",
    "package_model",
    "unload_ipython_extension",
    "wait_for_pictures",
]


def load_ipython_extension(ipython: InteractiveShell) -> None:
    from .magics.commands import RemoteMagic
    from .magics.usage import empty_cell_body

    magic = RemoteMagic(ipython)
    ipython.register_magics(magic)
    ipython.user_ns.setdefault("_remote_magic", magic)
    if empty_cell_body not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(empty_cell_body)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    from .magics.usage import empty_cell_body

    magic = ipython.user_ns.pop("_remote_magic", None)
    if empty_cell_body in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(empty_cell_body)
    if magic is not None and magic in ipython.configurables:
        ipython.configurables.remove(magic)

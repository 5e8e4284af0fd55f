"""remote-magic, the notebook side: magics and a client to train XGBoost models on hidden data.

`%load_ext remote_magic` registers the magics; `remote_magic.Client` does the same from a script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .client import Client, Job, package_model  # noqa: E402
from .compare import Comparison, compare  # noqa: E402
from .errors import RemoteError, RemoteMagicError  # noqa: E402
from .result import TrainResult  # noqa: E402
from .wire import DatasetSpec  # noqa: E402

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = [
    "Client",
    "Comparison",
    "DatasetSpec",
    "Job",
    "RemoteError",
    "RemoteMagicError",
    "TrainResult",
    "compare",
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

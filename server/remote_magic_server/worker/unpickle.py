"""The strict unpickler: decodes submitted model bytes for real, under the rules of the contract's payload.py.

Runs only inside a sandboxed worker, because `Booster.__setstate__` hands the bytes to XGBoost's C++
parser, which is not memory-safe on hostile input. `approved_loads` is the one place where cloudpickle
decodes submitted bytes: only in the confined worker, only for a payload whose exact hash the data owner
approved (`remote-magic-server review`).
"""

from __future__ import annotations

import hashlib
import importlib
import pickle

from remote_magic.contract.codes import Refusal
from remote_magic.contract.payload import BUILDERS, CLASSES, RuleUnpickler, check_call

_UNKNOWN = object()


def _import(dotted: str) -> object:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


class StrictUnpickler(RuleUnpickler):
    dispatch = dict(RuleUnpickler.dispatch)

    def __init__(self, data: bytes, max_bytes: int):
        super().__init__(data, max_bytes)
        self._builders: dict[int, tuple[object, str]] = {}
        self._classes: dict[int, object] = {}

    def resolve(self, dotted: str) -> object:
        obj = _import(dotted)
        if dotted in BUILDERS:
            self._builders[id(obj)] = (obj, dotted)
        if dotted in CLASSES:
            self._classes[id(obj)] = obj
        return obj

    def build(self, func: object, args: tuple) -> object:
        builder, dotted = self._builders.get(id(func), (_UNKNOWN, ""))
        if builder is not func:
            raise Refusal("invalid_model", "the model's bytes call something that is not a pure data builder")
        check_call(dotted, args)
        return func(*args)  # type: ignore[operator]

    def new(self, cls: object, args: tuple) -> object:
        if id(cls) not in self._classes or self._classes[id(cls)] is not cls:
            raise Refusal("invalid_model", "the model's bytes build an object of a class that is not allowed")
        return cls.__new__(cls, *args)  # type: ignore[call-overload]


def strict_loads(data: bytes, max_bytes: int) -> object:
    """Decode a payload; raise Refusal for anything the rules refuse or XGBoost cannot parse."""
    try:
        obj = StrictUnpickler(data, max_bytes).load()
    except Refusal:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. XGBoostError from Booster.__setstate__ on bad bytes
        raise Refusal("invalid_model", "the model could not be decoded: its bytes are corrupt") from exc
    return obj


def approved_loads(data: bytes, approved_sha256: str) -> object:
    """Decode an owner-approved payload with notebook code; the bytes must be the approved ones."""
    if hashlib.sha256(data).hexdigest() != approved_sha256:
        raise Refusal("invalid_model", "the model is not the one the data owner approved")
    import cloudpickle  # noqa: F401 - registers the reconstructors cloudpickle streams refer to

    try:
        obj = pickle.loads(data)  # noqa: S301 - approved by the owner; we are inside the sandbox
    except Exception as exc:  # noqa: BLE001 - any failure of approved code is a decoding failure
        raise Refusal("invalid_model", "the approved model could not be decoded") from exc
    return obj

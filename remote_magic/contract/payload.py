"""The rules for decoding submitted model bytes, and a structural scan that applies them without building.

Pure and shared: the server's API uses `scan` to refuse a hostile or malformed payload with a 4xx before it
is queued, without importing XGBoost or creating any object; the client's dry run scans the bytes it would
send with the same function; the server's strict unpickler (worker/unpickle.py) applies the same rules for
real inside the sandbox. Both run on the pure-Python `pickle._Unpickler`, whose dispatch
table we copy and narrow:

* globals come only from an allowlist of exact `module.name` strings (the estimator and preprocessor
  classes, the pure builders, and a few numpy scalar types that may appear only as parameter values);
* REDUCE may call only pure builders (numpy array and dtype reconstruction, bytearray, slice, OrderedDict);
* classes are built only through NEWOBJ (`cls.__new__` + BUILD state), never by calling them, so
  `Booster(None, None, "/some/path")` cannot be expressed;
* INST, OBJ, NEWOBJ_EX, EXT*, PERSID are refused, and so is any stream below protocol 3; so are the set
  opcodes (EMPTY_SET, ADDITEMS, FROZENSET), which no supported model emits;
* every dict key (SETITEM, SETITEMS, DICT) is a string, a number (an int within 64 bits), a bool or
  None, whose hash costs at most its own bytes: a tuple key of tuples that each hold the one before twice
  costs 2**depth steps to hash, in one C call that holds the GIL (a 285-byte payload stopped the API for
  19 s, red-team rev8 #1); an OrderedDict is built empty and gets its items the same way;
* a tuple nests at most `MAX_TUPLE_DEPTH` (32) tuples deep and holds at most `MAX_TUPLE_SIZE` (65,536)
  elements, counting those of the tuples inside it each time they appear: what hashing it (a numpy
  dtype's BUILD hashes its `names`) or building a code object from it (`types.CodeType` walks its
  constants) visits. A tuple that holds the one before it twice, 40 times over, is 360 bytes and 2**40
  visits; a depth bound alone does not bound that (a width of 100 at depth 16 is 100**16), and past about
  10**5 levels CPython's tuple hash overflows the C stack. Supported models nest 2 deep and hold 9
  (a fitted ColumnTransformer pipeline); notebook code about 5 and 40 (tests/test_hostile_payloads.py);
* a BYTEARRAY8 may claim no more bytes than the payload holds (pickle allocates the claim first);
* every opcode is counted against a budget (`max_opcodes`): each one pushes, marks or memoizes at most
  one object, so the count bounds what a scan holds (a flood of one-byte EMPTY_LIST or MEMOIZE opcodes
  cost the API process about 75 bytes of memory per payload byte, 15 GB at the size limit).

Why it is long: it is the whole rule set for hostile bytes (the allowlists, the narrowed unpickler, the
scan, the naming pass for notebook code), kept in one file so that it can be audited in one sitting.
"""

from __future__ import annotations

import encodings.raw_unicode_escape  # noqa: F401 - text opcodes decode with it; load it now, not mid-scan
import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..families import WHAT_A_MODEL_MAY_BE, Manifest, manifest_of, model_classes, top_level_names
from .codes import Refusal

MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
PROTOCOL = 5
# The most opcodes a payload may run, and at most one per this many of its bytes: far above what a
# supported model needs (measured in tests/test_hostile_payloads: two per one-hot level, a few hundred
# besides, at least 4.8 bytes each; so about 120,000 one-hot levels), far below what fills memory or
# stalls the API: each opcode holds at most one object of about 70 bytes (besides the bytes and text it
# reads, which the size limit bounds), so a flood is refused after ~20 MB and ~0.2 s of CPU.
MAX_OPCODES = 250_000
MAX_TUPLE_DEPTH = 32
MAX_TUPLE_SIZE = 2**16
_BYTES_PER_OPCODE = 2
_LEAST_OPCODES = 1024

# A fitted ColumnTransformer keeps its `remainder="passthrough"` as an identity FunctionTransformer; its
# `func` could only be another allowed global, and it is never a step of the canonical form.
_FITTED_STATE_ONLY = {"sklearn.preprocessing._function_transformer.FunctionTransformer"}
CLASSES: frozenset[str] = model_classes() | _FITTED_STATE_ONLY
TOP_LEVEL: dict[str, str] = top_level_names()
# Types that a payload may name as a parameter value (OneHotEncoder(dtype=np.float64)) but never call.
VALUES: frozenset[str] = frozenset(
    {
        f"numpy.{t}"
        for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool_")
    }
)
BUILDERS: frozenset[str] = frozenset(
    {
        "numpy._core.numeric._frombuffer",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.core.numeric._frombuffer",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy.dtype",
        "numpy.ndarray",
        "builtins.bytearray",
        "builtins.slice",
        # A model fitted with an eval_set keeps its history (`evals_result_`) as an OrderedDict: a plain
        # mapping whose constructor only stores the items it is given.
        "collections.OrderedDict",
    }
)
# Builders called with no arguments only: an OrderedDict's items come by SETITEMS, whose keys are checked
# (`OrderedDict.__reduce__` emits no arguments; given pairs, it would hash their keys unchecked).
_ARGUMENTLESS = frozenset({"collections.OrderedDict"})
_CUSTOM_CODE_MODULES = ("cloudpickle", "__main__", "__mp_main__")

_FORBIDDEN_OPCODES = {
    pickle.INST: "INST",
    pickle.OBJ: "OBJ",
    pickle.NEWOBJ_EX: "NEWOBJ_EX",
    pickle.EXT1: "EXT1",
    pickle.EXT2: "EXT2",
    pickle.EXT4: "EXT4",
    pickle.PERSID: "PERSID",
    pickle.BINPERSID: "BINPERSID",
    pickle.EMPTY_SET: "EMPTY_SET",
    pickle.ADDITEMS: "ADDITEMS",
    pickle.FROZENSET: "FROZENSET",
}
# Dict keys whose hash needs no walk over other objects (a fitted encoder keys `_missing_indices` by int).
_KEY_TYPES = (str, int, float, bool, type(None))
_MAX_INT_KEY = 2**63


def _safe_name(text: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned[:120]


def is_custom_code(module: str) -> bool:
    return module.split(".")[0] in _CUSTOM_CODE_MODULES


def plain_key(key: object) -> bool:
    """Whether a dict key hashes without walking other objects, so that storing it costs no more than its
    own bytes (and `str(key)` works: an int past 4,300 digits does not print)."""
    if type(key) is int:
        return -_MAX_INT_KEY <= key < _MAX_INT_KEY
    return type(key) in _KEY_TYPES


def check_call(dotted: str, args: tuple) -> None:
    """Refuse a call of a pure builder with arguments it may not take."""
    if dotted in _ARGUMENTLESS and args:
        raise Refusal("invalid_model", "the model's bytes build a mapping from arguments instead of items")


def check_global(module: str, name: str) -> str:
    """Return the dotted name if the rules allow it, else raise Refusal."""
    dotted = f"{module}.{name}"
    if dotted in CLASSES or dotted in BUILDERS or dotted in VALUES:
        return dotted
    if is_custom_code(module):
        raise Refusal(
            "custom_code_refused",
            "the model contains code defined in the notebook (a custom objective, metric, function or "
            "class); this dataset does not accept custom code. Use built-in objectives and metrics.",
        )
    raise Refusal(
        "invalid_model",
        f"the model refers to {_safe_name(dotted)}, which is not allowed; a model must be "
        f"{WHAT_A_MODEL_MAY_BE}",
    )


class RuleUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler with the narrowed dispatch table; subclasses say how to build."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, max_bytes: int = MAX_PAYLOAD_BYTES, max_opcodes: int = MAX_OPCODES):
        if len(data) > max_bytes:
            raise Refusal("payload_too_large", f"the model is larger than {max_bytes // 2**20} MiB")
        if len(data) < 2 or data[0] != pickle.PROTO[0]:
            raise Refusal("invalid_model", "not a pickle of protocol 3 or newer")
        if data[1] < 3:
            raise Refusal("invalid_model", f"pickle protocol {data[1]} is refused; use protocol 3 or newer")
        super().__init__(io.BytesIO(data))
        self.payload_size = len(data)
        self.opcodes_left = min(max_opcodes, _LEAST_OPCODES + len(data) // _BYTES_PER_OPCODE)
        # Each tuple built so far, by id, with its depth and size (`tuple_of`); holding it keeps its id
        # from being reused. One entry per tuple opcode, so the opcode budget bounds it.
        self._tuples: dict[int, tuple[tuple, int, int]] = {}

    def resolve(self, dotted: str) -> object:
        raise NotImplementedError

    def build(self, func: object, args: tuple) -> object:
        raise NotImplementedError

    def new(self, cls: object, args: tuple) -> object:
        raise NotImplementedError

    def find_class(self, module: str, name: str) -> object:
        return self.resolve(check_global(module, name))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        if not isinstance(args, tuple):
            raise Refusal("invalid_model", "the model's bytes hold a malformed call")
        self.stack[-1] = self.build(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(args, tuple):
            raise Refusal("invalid_model", "the model's bytes hold a malformed object")
        self.append(self.new(cls, args))

    def keep(self, key: object) -> bool:
        """Whether to store an item under `key`, asked before the key is hashed: a key that is not
        `plain_key` is refused."""
        if not plain_key(key):
            raise Refusal(
                "invalid_model", "the model's bytes key a mapping by something not a string or a number"
            )
        return True

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        if self.keep(key):
            self.stack[-1][key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            if self.keep(items[i]):
                target[items[i]] = items[i + 1]

    def load_dict(self) -> None:
        items = self.pop_mark()
        self.append({items[i]: items[i + 1] for i in range(0, len(items), 2) if self.keep(items[i])})

    def tuple_of(self, items: list) -> tuple:
        """A tuple of `items`, refused if it nests more than `MAX_TUPLE_DEPTH` deep or holds more than
        `MAX_TUPLE_SIZE` elements counted as hashing it visits them (a tuple met twice, twice)."""
        depth, size = 1, 1 + len(items)
        for item in items:
            if type(item) is tuple and item:
                _, inner_depth, inner_size = self._tuples.get(id(item), (item, 1, 1 + len(item)))
                depth, size = max(depth, inner_depth + 1), size + inner_size - 1
            elif isinstance(item, frozenset):
                size += len(item)
        if depth > MAX_TUPLE_DEPTH:
            raise Refusal("invalid_model", f"the model's bytes nest tuples more than {MAX_TUPLE_DEPTH} deep")
        if size > MAX_TUPLE_SIZE:
            raise Refusal(
                "invalid_model",
                f"the model's bytes hold a tuple of more than {MAX_TUPLE_SIZE} elements (counting those of "
                "the tuples inside it each time they appear)",
            )
        made = tuple(items)
        if made:
            self._tuples[id(made)] = (made, depth, size)
        return made

    def load_tuple(self) -> None:
        items = self.pop_mark()  # first: it swaps the stack, and with it `self.append`
        self.append(self.tuple_of(items))

    def load_tuple1(self) -> None:
        self.stack[-1] = self.tuple_of(self.stack[-1:])

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self.tuple_of(self.stack[-2:])]

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self.tuple_of(self.stack[-3:])]

    def load_bytearray8(self) -> None:
        # pickle's own allocates (and zero-fills) the length the stream claims before reading: 12 bytes
        # claiming 1 GiB cost the API 1 GiB of memory and 0.8 s of CPU.
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self.payload_size:
            raise Refusal("invalid_model", "the model's bytes are truncated or corrupt")
        buffer = bytearray(size)
        if self.readinto(buffer) != size:
            raise Refusal("invalid_model", "the model's bytes are truncated or corrupt")
        self.append(buffer)

    def load(self) -> object:
        try:
            return super().load()
        except Refusal:
            raise
        except RecursionError as exc:
            raise Refusal("invalid_model", "the model's bytes are nested too deeply") from exc
        except MemoryError as exc:
            raise Refusal("payload_too_large", "the model's bytes expand beyond the memory limit") from exc
        except Exception as exc:  # noqa: BLE001 - struct.error, EOFError, UnpicklingError, KeyError...
            raise Refusal("invalid_model", "the model's bytes are truncated or corrupt") from exc

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.TUPLE[0]] = load_tuple
    dispatch[pickle.TUPLE1[0]] = load_tuple1
    dispatch[pickle.TUPLE2[0]] = load_tuple2
    dispatch[pickle.TUPLE3[0]] = load_tuple3


def _refuse(opcode_name: str):
    def refuse(self: RuleUnpickler) -> None:
        raise Refusal("invalid_model", f"pickle opcode {opcode_name} is not allowed")

    return refuse


for _code, _name in _FORBIDDEN_OPCODES.items():
    RuleUnpickler.dispatch[_code[0]] = _refuse(_name)


def _counted(step: Callable[[RuleUnpickler], None]) -> Callable[[RuleUnpickler], None]:
    def counted(self: RuleUnpickler) -> None:
        self.opcodes_left -= 1
        if self.opcodes_left < 0:
            raise Refusal(
                "payload_too_large",
                "the model's bytes build more objects than any supported model needs",
            )
        step(self)

    return counted


RuleUnpickler.dispatch = {_key: _counted(_step) for _key, _step in RuleUnpickler.dispatch.items()}


def package_model(model: object) -> bytes:
    """Serialize a model as the server expects: cloudpickle (so notebook code is named, not lost)."""
    import cloudpickle

    return cloudpickle.dumps(model, protocol=PROTOCOL)


@dataclass(frozen=True)
class _Ref:
    dotted: str

    def __setstate__(self, state: object) -> None:
        # BUILD would otherwise rewrite `dotted` through the instance's __dict__, e.g. to a tuple whose
        # hash the allowlist lookups then pay for.
        raise Refusal("invalid_model", "the model's bytes give state to a global")


@dataclass
class _Placeholder:
    """Stands for an object the scan does not build; absorbs state and items."""

    of: str
    state: list = field(default_factory=list)

    def __setstate__(self, state: object) -> None:
        self.state.append(state)

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass


class _Scanner(RuleUnpickler):
    dispatch = dict(RuleUnpickler.dispatch)

    def resolve(self, dotted: str) -> object:
        return _Ref(dotted)

    def build(self, func: object, args: tuple) -> object:
        if not isinstance(func, _Ref) or func.dotted not in BUILDERS:
            raise Refusal("invalid_model", "the model's bytes call something that is not a pure data builder")
        check_call(func.dotted, args)
        return _Placeholder(func.dotted)

    def new(self, cls: object, args: tuple) -> object:
        if not isinstance(cls, _Ref) or cls.dotted not in CLASSES:
            raise Refusal("invalid_model", "the model's bytes build an object of a class that is not allowed")
        return _Placeholder(cls.dotted)


@dataclass(frozen=True)
class ScanReport:
    """What the top-level object of a payload is, learned without building it, and the plain parameters
    it states (None for a Booster, whose parameters are inside its bytes)."""

    model: str
    fitted: bool
    estimator: str | None = None
    params: dict | None = None
    rounds: int | None = None
    family: str | None = None  # the family whose light half checks the stated parameters


def _check_int(name: object, value: object) -> None:
    if type(value) is int and not -_MAX_INT_KEY <= value < _MAX_INT_KEY:
        raise Refusal("parameter_out_of_bounds", f"{_safe_name(str(name))} is a whole number past 64 bits")


def _scalars(state: object) -> dict:
    """The plain parameters a state holds; an int past 64 bits is no parameter any model takes (and past
    4,300 digits it does not print), so it is refused here rather than fail a bounds message later."""
    if not isinstance(state, dict):
        return {}
    for k, v in state.items():
        _check_int(k, v)
    return {
        str(k): v
        for k, v in state.items()
        if isinstance(v, (bool, int, float, str)) and not (isinstance(v, float) and v != v)
    }


def _estimator(obj: _Placeholder, model: str) -> ScanReport:
    params = _scalars(obj.state[0] if obj.state else None)
    rounds = params.get("n_estimators")
    return ScanReport(
        model,
        fitted=bool(obj.state) and "_Booster" in (obj.state[0] if isinstance(obj.state[0], dict) else {}),
        estimator=TOP_LEVEL.get(obj.of),
        params=params,
        rounds=rounds if isinstance(rounds, int) else 100,
        family=_family(manifest_of(obj.of)),
    )


def _family(manifest: Manifest | None) -> str | None:
    return manifest.name if manifest is not None else None


def describe_top(obj: object) -> ScanReport:
    """Classify the top-level placeholder of a scanned payload; raise if it is not a supported model."""
    if isinstance(obj, _Placeholder) and obj.of in TOP_LEVEL:
        name = TOP_LEVEL[obj.of]
        if name == "Booster":
            return ScanReport(name, fitted=True)
        if name == "Pipeline":
            state = obj.state[0] if obj.state and isinstance(obj.state[0], dict) else {}
            steps = state.get("steps")
            step = steps[-1] if isinstance(steps, (list, tuple)) and steps else None
            if not isinstance(step, (list, tuple)) or len(step) != 2:
                raise Refusal("invalid_model", "a Pipeline's steps must be a list of (name, step) pairs")
            last = step[1]
            if isinstance(last, _Placeholder) and last.of in TOP_LEVEL:
                return replace(_estimator(last, name), fitted=False)
            return ScanReport(name, fitted=False)
        return _estimator(obj, name)
    if isinstance(obj, dict) and "params" in obj:
        rounds = obj.get("num_boost_round", 10)
        _check_int("num_boost_round", rounds)
        return ScanReport(
            "BoosterParams",
            fitted=isinstance(obj.get("booster"), _Placeholder),
            params=_scalars(obj.get("params")),
            rounds=rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else None,
            family=_family(manifest_of(params_dict=True)),
        )
    raise Refusal("unsupported_model", f"the model must be {WHAT_A_MODEL_MAY_BE}")


@dataclass
class CodeRecord:
    """The constructor arguments of one code object as the payload spells them (never built here)."""

    args: tuple


class CodeLister(_Scanner):
    """A naming-only pass over a payload that holds notebook code: every global becomes a reference and
    every call a placeholder, so nothing is imported, built or run. It collects the globals referred to,
    the names of functions (`__qualname__` in cloudpickle's recorded state) and classes (the name argument
    of `_make_skeleton_class`), and the arguments of each code object, for the owner's review."""

    dispatch = dict(_Scanner.dispatch)

    def __init__(self, data: bytes, max_bytes: int = MAX_PAYLOAD_BYTES, max_opcodes: int = MAX_OPCODES):
        super().__init__(data, max_bytes, max_opcodes)
        self.names: list[str] = []
        self.codes: list[CodeRecord] = []
        # An ordered set: a list's `in` made naming 40,000 distinct globals take 11 s of the API's CPU.
        self._globals: dict[str, None] = {}

    @property
    def globals(self) -> list[str]:
        """The globals the payload refers to, each once, in the order it first names them."""
        return list(self._globals)

    def find_class(self, module: str, name: str) -> object:
        dotted = _safe_name(f"{module}.{name}")
        self._globals[dotted] = None
        return _Ref(dotted)

    def keep(self, key: object) -> bool:
        """Notebook code may key a dict by a tuple: the item is left out (never hashed), not refused."""
        return plain_key(key)

    def build(self, func: object, args: tuple) -> object:
        dotted = func.dotted if isinstance(func, _Ref) else ""
        if dotted.endswith("._builtin_type") and args == ("CodeType",):
            return _Ref("types.CodeType")
        if dotted == "types.CodeType":
            record = CodeRecord(args)
            self.codes.append(record)
            return record
        if dotted.endswith(("subimport", "dynamic_subimport")) and args and isinstance(args[0], str):
            self.names.append(f"import {_safe_name(args[0])}")
        if dotted.endswith("._make_skeleton_class") and len(args) > 1 and isinstance(args[1], str):
            self.names.append(f"class {_safe_name(args[1])}")
        for arg in args:
            state = arg[1] if isinstance(arg, tuple) and len(arg) == 2 else arg
            if isinstance(state, dict) and isinstance(state.get("__qualname__"), str):
                self.names.append(f"function {_safe_name(state['__qualname__'])}")
        return _Placeholder(dotted)

    def new(self, cls: object, args: tuple) -> object:
        return _Placeholder("object")

    # Sets are refused in a model, but notebook code may hold one (a closure over a set): named, not lost.
    # Like a dict's keys (`keep`), only plain items go in, so none is hashed by walking other objects:
    # this pass runs in the API process, and a frozenset of a tuple DAG hashed 2**depth leaves there.
    def load_empty_set(self) -> None:
        self.append(set())

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise Refusal("invalid_model", "the model's bytes are truncated or corrupt")
        target.update(item for item in items if plain_key(item))

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self.append(frozenset(item for item in items if plain_key(item)))

    dispatch.update(
        {
            pickle.EMPTY_SET[0]: _counted(load_empty_set),
            pickle.ADDITEMS[0]: _counted(load_additems),
            pickle.FROZENSET[0]: _counted(load_frozenset),
        }
    )


class CustomCodeRefused(Refusal):
    """`custom_code_refused`, with the names of the notebook code the payload holds (`custom_code_names`):
    a dataset that accepts custom code keeps them for the owner's review without another pass."""

    def __init__(self, message: str, names: list[str]):
        super().__init__("custom_code_refused", message)
        self.names = names


def custom_code_names(
    data: bytes, max_bytes: int = MAX_PAYLOAD_BYTES, max_opcodes: int = MAX_OPCODES
) -> list[str]:
    """The notebook-defined functions and classes a payload holds, by name (best effort, never runs); a
    payload past the opcode budget is refused, as in a scan."""
    lister = CodeLister(data, max_bytes, max_opcodes)
    try:
        lister.load()
    except Refusal as exc:
        if exc.code == "payload_too_large":
            raise
    return sorted(set(lister.names))[:20]


def scan(data: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> ScanReport:
    """Check a payload against the rules without creating any object or importing its modules."""
    scanner = _Scanner(data, max_bytes)
    try:
        return describe_top(scanner.load())
    except Refusal as exc:
        if exc.code != "custom_code_refused":
            raise
        # The naming pass runs on what the scan left of the budget: the two together run no more opcodes
        # than one scan may.
        names = custom_code_names(data, max_bytes, max(scanner.opcodes_left, 0))
        # `import numpy` is how a notebook function reaches a module, not code of its own: not named here
        shown = [n for n in names if not n.startswith("import ")]
        message = f"{exc.message} Found: {', '.join(shown)}."[:800] if shown else exc.message
        raise CustomCodeRefused(message, names) from None

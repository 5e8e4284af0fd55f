"""What a payload with notebook code would run, shown to the data owner before they approve it.

cloudpickle ships bytecode, not source text, so the owner sees the next best thing: every global the
payload refers to, every function and class by name, and a disassembly of each code object. Nothing in
the payload is run to get there: the naming pass of payload.py records the code objects' constructor
arguments as plain data, and only then are code objects built from them (never functions, never
called) and disassembled with `dis`. Building and disassembling hostile code objects is still done in a
confined worker (a `review` task: the production sandbox, with no dataset and a throwaway folder),
because CPython does not promise that odd code objects are memory-safe to inspect.
"""

from __future__ import annotations

import dis
import io
import types

from remote_magic.contract.codes import Refusal
from remote_magic.contract.payload import CodeLister, CodeRecord

from ..protocol import ReviewReport

_CONSTS = 7  # position of co_consts among CodeType's constructor arguments (CPython 3.8 - 3.13)
MAX_REPORT_CHARS = 200_000
_LONGEST_INT_BITS = 4096  # about 1,233 digits: prints well under Python's 4,300-digit limit


def _code_object(record: CodeRecord) -> types.CodeType:
    args = list(record.args)
    if len(args) > _CONSTS and isinstance(args[_CONSTS], tuple):
        args[_CONSTS] = tuple(_code_object(c) if isinstance(c, CodeRecord) else c for c in args[_CONSTS])
    return types.CodeType(*args)


def _literal(item: str | int | float) -> str:
    """`repr`, except for a whole number too long to print (past 4,300 digits `repr` raises)."""
    if isinstance(item, int) and item.bit_length() > _LONGEST_INT_BITS:
        return f"<a whole number of {item.bit_length()} bits>"
    return repr(item)


def _strings(record: CodeRecord) -> list[str]:
    found: list[str] = []
    for arg in record.args:
        items = arg if isinstance(arg, tuple) else (arg,)
        found += [_literal(item) for item in items if isinstance(item, (str, int, float))]
    return found


def describe(data: bytes) -> str:
    """The review text for a payload: globals, names, and a disassembly of every code object."""
    lister = CodeLister(data)
    try:
        lister.load()
    except Refusal as exc:
        tail = f"\n(the payload's stream stops early: {exc.message})"
    else:
        tail = ""
    out = io.StringIO()
    out.write("globals it refers to:\n" + "".join(f"  {g}\n" for g in lister.globals))
    out.write("functions and classes:\n" + "".join(f"  {n}\n" for n in sorted(set(lister.names))))
    nested: set[int] = set()  # inner code objects: dis.dis shows them with their outer one
    for record in lister.codes:
        consts = record.args[_CONSTS] if len(record.args) > _CONSTS else ()
        nested |= {id(c) for c in consts if isinstance(c, CodeRecord)} if isinstance(consts, tuple) else set()
    for record in lister.codes:
        if id(record) in nested:
            continue
        listing = io.StringIO()
        try:
            code = _code_object(record)
            # `dis` prints constants with repr: a whole number past 4,300 digits raises there too.
            dis.dis(code, file=listing)
        except Exception:  # noqa: BLE001 - another Python version's layout, or a malformed record
            literals = ", ".join(_strings(record))
            out.write(f"\ncode object (not rebuildable or printable here); its literals: {literals}\n")
            continue
        out.write(f"\ncode {code.co_qualname if hasattr(code, 'co_qualname') else code.co_name}")
        out.write(f" from {code.co_filename}:{code.co_firstlineno}\n")
        out.write(listing.getvalue())
    return (out.getvalue() + tail)[:MAX_REPORT_CHARS]


def run(payload: bytes) -> ReviewReport:
    """The review of a payload, in a confined worker (a review task: no dataset, a throwaway folder)."""
    return ReviewReport(text=describe(payload))

"""Reading a CSV file so that one row cannot change how the other rows are read (modes dp, dp_eval_only).

Arrow frames records on its own terms: a quote one row opens and never closes takes the later lines
into one value (rows lost by the thousand, or a failed read), and without `newlines_in_values` a quoted
line break across its 1 MiB block fails the read (red-team review 8). Here a record is read only when it
is RFC 4180 (`_grammar`: a quote only around a whole field, `""` inside), at most `RECORD_BYTES` long,
and, when a quoted value spans lines, it does not close right after the delimiter or a line break. A
line where no such record starts is skipped alone, and reading resumes at the next line. Arrow then
reads the records, which it frames as they are framed here (tests/test_snapshots_csv.py).

Why the last rule: a row that leaves a quote open makes the next quote close it, and in a well-formed
file the next quote that can close it opens a later row's field, so it follows the delimiter or a line
break. Without the rule such a row joined the rows up to that quote into one record; with it, it is
skipped alone and every other row is read as before. The price: a quoted value that spans lines and
ends with the delimiter or a line break, or one over the bound, is not read as one value: its first line
is skipped and its other lines are read as rows of their own (the owner's repairs count them).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

RECORD_BYTES = 8 << 20  # a longer record or line is skipped; memory stays within a few times this
BLOCK_BYTES = 1 << 20
# csv's field limit (128 Ki characters by default) failed a block, and so the snapshot, on one row's long
# field (red-team review 10). No text given to `csv` here is longer than a held record and a block.
FIELD_CHARS = 2 * (RECORD_BYTES + BLOCK_BYTES)
QUOTED_LINES = 2_000  # a block quoting more lines is checked by one pass of `_grammar` over it all
_ENDS = (b"\n", b"\r")
NULLS = pa.array([v.encode() for v in pacsv.ConvertOptions().null_values], pa.binary())  # Arrow's NULL words


@cache
def _grammar(delimiter: str) -> tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes]]:
    """One line that is a whole record, a run of whole records (each ending with a line break), and one
    record, as the module docstring says."""
    d = re.escape(delimiter.encode())
    plain = rb'[^"\r\n' + d + rb"]*"
    one_line = rb'"(?:[^"\r\n]|"")*"'
    # A line break inside, so that no field matches both this and `one_line`: with both, a line of m
    # quoted fields that is no record was tried 2**m ways (22 fields: 1.6 s; 40: days).
    spanning = rb'"(?:[^"\r\n]|"")*[\r\n](?:[^"]|"")*[^"\r\n' + d + rb'](?:"")*"'
    line_field = rb"(?:" + one_line + rb"|" + plain + rb")"
    field = rb"(?:" + one_line + rb"|" + spanning + rb"|" + plain + rb")"
    end = rb"(?:\r\n|\r|\n|\Z)"
    line = re.compile(line_field + rb"(?:" + d + line_field + rb")*" + end)
    record = field + rb"(?:" + d + field + rb")*" + end
    return line, re.compile(rb"(?:" + record + rb")*"), re.compile(record)


def _parsed(text: str, delimiter: str) -> list[list[str]]:
    """`text`'s rows as `csv` reads them. csv's field limit is process-wide: it is set here, where it is
    needed, to a bound no field here reaches, and kept (the server's only other `csv` reader reads a
    bounded header; setting it back would race with a refresh reading in another thread)."""
    csv.field_size_limit(FIELD_CHARS)
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def _first_end(data: bytes, start: int = 0) -> int:
    """Where the first line end at or after `start` is (-1: none), reading windows that double, so no
    further than about twice the line: a find for `\n` and one for `\r`, each to the end of `data`, on
    every line skipped made a refresh quadratic (red-team review 10)."""
    width = 1 << 10
    while start < len(data):
        found = [i for i in (data.find(end, start, start + width) for end in _ENDS) if i >= 0]
        if found:
            return min(found)
        start, width = start + width, 2 * width
    return -1


def _next_line(data: bytes, at: int) -> int:
    """Where the line after the one at `at` starts (`len(data)` if none does)."""
    cut = _first_end(data, at)
    if cut < 0:
        return len(data)
    return cut + 2 if data[cut : cut + 2] == b"\r\n" else cut + 1


class _Blocks:
    """Whole physical lines of a byte stream, about `BLOCK_BYTES` at a time, in bounded memory."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.rest = b""
        self.done = False

    def _more(self) -> None:
        chunk = self.stream.read(BLOCK_BYTES)
        self.done = not chunk
        self.rest += chunk

    def header(self) -> bytes:
        """The first line (the column names)."""
        while _first_end(self.rest) < 0 and not self.done and len(self.rest) <= RECORD_BYTES:
            self._more()
        cut = _next_line(self.rest, 0)
        line, self.rest = self.rest[:cut], self.rest[cut:]
        return line

    def next(self, least: int = 0) -> bytes | None:
        """The next whole lines (b"" at the end), at least `least` bytes of them where the stream has them,
        or None for one line over `RECORD_BYTES`, skipped."""
        while True:
            end = max(self.rest.rfind(b"\n"), self.rest.rfind(b"\r")) + 1
            if end and (len(self.rest) >= max(BLOCK_BYTES, least) or self.done):
                block, self.rest = self.rest[:end], self.rest[end:]
                return block
            if self.done:  # the last line, without a line end
                block, self.rest = self.rest, b""
                return block if len(block) <= RECORD_BYTES else None
            if not end and len(self.rest) > RECORD_BYTES:
                while (cut := _first_end(self.rest)) < 0 and not self.done:
                    self.rest = b""
                    self._more()
                self.rest = self.rest[cut + 1 :] if cut >= 0 else b""
                return None
            self._more()


def _one_line_records(block: bytes, line: re.Pattern[bytes]) -> bool:
    """Whether each line of `block` that holds a quote is a whole record by itself (most files quote few
    lines: only those are read)."""
    if b"\r" in block:
        lines = block.splitlines(keepends=True)
        quoted = [one for one in lines if b'"' in one]
        return len(quoted) <= QUOTED_LINES and all(line.fullmatch(one) for one in quoted)
    at, checked = block.find(b'"'), 0
    while at >= 0:  # only `\n` ends lines here: a find for `\r` would read the whole block each time
        if checked == QUOTED_LINES:
            return False
        start, stop = block.rfind(b"\n", 0, at) + 1, block.find(b"\n", at) + 1 or len(block)
        if not line.fullmatch(block, start, stop):
            return False
        at, checked = block.find(b'"', stop), checked + 1
    return True


class TotalCsv:
    """One file's rows as batches of binary columns (`names`, in that order), read as the module
    docstring says. `skip` counts each line or record skipped; `missing` is a declared column the
    file's header lacks (a failure no row decides)."""

    def __init__(self, stream, names: list[str], delimiter: str, skip: Callable[[], None]) -> None:
        self.blocks = _Blocks(stream)
        self.names = names
        self.delimiter = delimiter
        self.skip = skip
        first = self.blocks.header().decode("utf-8", "replace")
        self.header = next(iter(_parsed(first, delimiter)), [])
        self.missing = [name for name in names if name not in self.header]
        self.line, self.records, self.record = _grammar(delimiter)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        held = b""  # the start of a record that may go on in the next block
        # A held record is read again with the next block: the next block is as long as it, so each byte
        # is read again a few times, not once for each block up to the record's end (red-team review 10).
        while (block := self.blocks.next(len(held))) != b"":
            if block is None:  # a line over the bound: no record that needs it can be read
                yield from self._scan(held, final=True)
                held = b""
                self.skip()
            elif not held and (b'"' not in block or _one_line_records(block, self.line)):
                yield from self._arrow(block)
            else:
                held = yield from self._scan(held + block, final=False)
        yield from self._scan(held, final=True)

    def _scan(self, data: bytes, final: bool) -> Iterator[pa.RecordBatch]:
        """Read the whole records of `data`, skipping one line wherever none starts; return the start of
        a record that more lines may complete (unless `final`: no more lines come)."""
        at, quotes = 0, data.count(b'"')  # the quotes from `at` to the end, counted once
        while at < len(data):
            end = self.records.match(data, at).end()
            if end > at:
                yield from self._arrow(data[at:end])
            else:  # No record starts here. With a quote open at the end of `data` one may, given more lines.
                if not final and quotes % 2 and len(data) - at <= RECORD_BYTES:
                    return data[at:]
                self.skip()
                end = _next_line(data, at)
            quotes -= data.count(b'"', at, end)
            at = end
        return b""

    def _arrow(self, block: bytes) -> Iterator[pa.RecordBatch]:
        """Whole records, framed as `_grammar` frames them, read by Arrow; one with the wrong number of
        fields is skipped whole. Arrow counts those only in text it can decode (its handler is given the
        row as text, and otherwise raises, printing "Exception ignored"), so a block that needs the count
        and is not UTF-8 is read by `csv` instead, as Arrow reads it (`_by_csv`)."""
        try:
            table = self._read(block, None)
        except pa.ArrowInvalid:
            skipped: list[None] = []
            try:
                block.decode()
                table = self._read(block, lambda _row: skipped.append(None) or "skip")
            except (UnicodeDecodeError, pa.ArrowInvalid):
                yield self._by_csv(block)
                return
            for _ in skipped:
                self.skip()
        yield from table.to_batches()

    def _rows(self, block: bytes) -> list[list[str] | None]:
        """`block`'s rows as `csv` reads them; if it fails, each record (as `_grammar` frames it) read
        alone, None for one it fails on."""
        try:
            return _parsed(block.decode("utf-8", "surrogateescape"), self.delimiter)
        except csv.Error:
            rows: list[list[str] | None] = []
            at = 0
            while at < len(block):
                found = self.record.match(block, at)
                end = found.end() if found and found.end() > at else _next_line(block, at)
                try:
                    rows += _parsed(block[at:end].decode("utf-8", "surrogateescape"), self.delimiter)
                except csv.Error:
                    rows.append(None)
                at = end
            return rows

    def _read(self, block: bytes, handler: Callable[[object], str] | None) -> pa.Table:
        return pacsv.read_csv(
            pa.BufferReader(block),
            read_options=pacsv.ReadOptions(column_names=self.header, block_size=len(block) + 1),
            parse_options=pacsv.ParseOptions(
                delimiter=self.delimiter, newlines_in_values=True, invalid_row_handler=handler
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(self.names, pa.binary()),
                include_columns=self.names,
                strings_can_be_null=True,
            ),
        )

    def _by_csv(self, block: bytes) -> pa.RecordBatch:
        """`_arrow`'s batch read by `csv`: the same values (bytes kept as they are, Arrow's NULL words as
        NULL), every record with the wrong number of fields skipped, and, should `csv` fail on the block
        (no row may fail it), every record it fails on."""
        take = [self.header.index(name) for name in self.names]
        kept = []
        counted = 0
        for row in self._rows(block):
            if row is None or (row and len(row) != len(self.header)):
                counted += 1
            elif row:
                kept.append([row[i].encode("utf-8", "surrogateescape") for i in take])
        for _ in range(counted):
            self.skip()
        columns = [pa.array(column, pa.binary()) for column in zip(*kept)] if kept else []
        columns = columns or [pa.array([], pa.binary()) for _ in self.names]
        null = pa.scalar(None, pa.binary())
        columns = [pc.if_else(pc.is_in(column, value_set=NULLS), null, column) for column in columns]
        return pa.RecordBatch.from_arrays(columns, names=self.names)

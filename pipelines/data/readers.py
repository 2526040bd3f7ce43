"""Reading one input file into a table, with errors that name the file and the line.

Delimited text is parsed with pandas' C parser; when pandas or a check refuses something, the
file is scanned again line by line in Python (`_scan_for_bad_line`, `_raise_decode_error`) so
that the `core.errors.DataError` names the file, the 1-based line and what to do about it. The
slow scan runs only on the error path. `read_parquet` does the same for Parquet, which has
no lines. No pandas, pyarrow, csv or codec exception escapes on bad input.

`location` and `row_text` let later checks on a parsed table name the line (text) or the row
(Parquet) of the value they refuse.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from core.errors import DataError

_Table = TypeVar("_Table")

_ENCODING_HINT = "pass the file's encoding with encoding=... (CLI: --encoding), e.g. 'latin-1'"


@dataclasses.dataclass(frozen=True)
class TextFormat:
    """How a delimited text file is laid out.

    Attributes:
        sep: Field separator (one character, or ``"::"`` for MovieLens 1M).
        names: Field names of a headerless file; ``None`` when the first line is a header.
        quoted: Whether fields may be quoted CSV-style (otherwise quotes are plain characters).
    """

    sep: str
    names: tuple[str, ...] | None = None
    quoted: bool = False


def _check_encoding(encoding: str) -> str:
    """Returns the codec's canonical name or raises `DataError` for an unknown one."""
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise DataError(
            f"unknown encoding {encoding!r}: Python has no codec of that name",
            hint="use a Python codec name such as 'utf-8', 'latin-1' or 'cp1252' (CLI: --encoding)",
        ) from None


def check_file(path: Path, what: str, hint: str | None = None) -> None:
    """Raises `DataError` unless ``path`` is an existing regular file.

    Args:
        path: The file.
        what: What the file should hold, named in the message.
        hint: What to do about it; defaults to "check the path".
    """
    if not path.exists():
        raise DataError(
            f"file not found ({what})",
            source=str(path),
            hint=hint or "check the path",
        )
    if not path.is_file():
        raise DataError(f"is not a file ({what})", source=str(path), hint=hint or "check the path")


def _open_binary(path: Path) -> io.BufferedIOBase:
    """Opens ``path`` for reading bytes, decompressing a ``.gz`` file on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _raise_decode_error(path: Path, encoding: str) -> None:
    """Finds the first line of ``path`` not decodable as ``encoding`` and raises on it.

    Returns normally only when the whole file decodes (the caller then reports its own error).
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    newlines = 0

    def error(message: str) -> DataError:
        return DataError(message, source=str(path), line=newlines + 1, hint=_ENCODING_HINT)

    with _open_binary(path) as handle:
        for raw in handle:
            try:
                newlines += decoder.decode(raw).count("\n")
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.end]
                raise error(f"cannot decode byte(s) {bad!r} as {encoding}") from None
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise error(f"the file ends in the middle of a {encoding} character") from None


def _records(path: Path, fmt: TextFormat, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(first line number, fields)`` of every non-blank record, header included."""
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")
        if fmt.quoted:
            reader = csv.reader(text, delimiter=fmt.sep)
            previous_end = 0
            for fields in reader:
                start = previous_end + 1
                previous_end = reader.line_num
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                yield start, fields
        else:
            for number, line in enumerate(text, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                yield number, line.split(fmt.sep)


def _data_records(path: Path, fmt: TextFormat, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """Like `_records` without the header line."""
    records = _records(path, fmt, encoding)
    if fmt.names is None:
        next(records, None)
    return records


def _parse_int(value: str) -> int | None:
    """``value`` as an int, accepting ``"3.0"`` as pandas does; ``None`` if not a whole number."""
    try:
        return int(value.strip())
    except ValueError:
        try:
            as_float = float(value)
        except ValueError:
            return None
        return int(as_float) if as_float.is_integer() else None


def _parse_float(value: str) -> float | None:
    """``value`` as a float, or ``None``."""
    try:
        return float(value.strip())
    except ValueError:
        return None


def _scan_for_bad_line(
    path: Path,
    fmt: TextFormat,
    encoding: str,
    int_columns: Sequence[str],
    float_columns: Sequence[str],
    required: Sequence[str],
) -> None:
    """Re-reads ``path`` in Python and raises `DataError` on the first malformed line.

    Checks the number of fields, that ``int_columns`` hold integers, ``float_columns``
    numbers (or nothing) and ``required`` columns something. Returns when every line is fine.
    """
    records = _records(path, fmt, encoding)
    if fmt.names is None:
        header = next(records, None)
        if header is None:
            return
        names = [name.strip() for name in header[1]]
    else:
        names = list(fmt.names)
    position = {name: i for i, name in enumerate(names)}
    checks: list[tuple[int, str, str]] = []
    for column in required:
        if column in position:
            checks.append((position[column], column, "required"))
    for column in int_columns:
        if column in position:
            checks.append((position[column], column, "int"))
    for column in float_columns:
        if column in position:
            checks.append((position[column], column, "float"))
    sep = "::" if fmt.sep == "::" else repr(fmt.sep)
    for number, fields in records:
        if len(fields) != len(names):
            raise DataError(
                f"expected {len(names)} fields separated by {sep}, found {len(fields)}",
                source=str(path),
                line=number,
                hint="fix or delete that line; is the separator or the file format right?",
            )
        for index, column, kind in checks:
            problem = _field_problem(kind, fields[index])
            if problem is not None:
                message, hint = problem
                raise DataError(message, source=str(path), line=number, column=column, hint=hint)


def _field_problem(kind: str, value: str) -> tuple[str, str] | None:
    """What is wrong with one field checked as ``kind``, as (message, hint), or ``None``.

    Args:
        kind: ``"required"`` (not blank), ``"int"`` (a whole number) or ``"float"`` (a
            number, or blank).
        value: The field's text.
    """
    if kind == "required" and not value.strip():
        return "value is missing", "fill it in or delete that line"
    if kind == "int" and _parse_int(value) is None:
        return (
            f"{value!r} is not an integer",
            "ids and timestamps must be whole numbers; fix or delete that line",
        )
    if kind == "float" and value.strip() and _parse_float(value) is None:
        return f"{value!r} is not a number", "fix or delete that line"
    return None


def line_numbers(path: Path, fmt: TextFormat, encoding: str, rows: Sequence[int]) -> list[int]:
    """1-based line numbers of data rows ``rows`` (0-based, as pandas counts them)."""
    wanted = {int(r) for r in rows}
    found: dict[int, int] = {}
    if wanted:
        last = max(wanted)
        for row, (number, _) in enumerate(_data_records(path, fmt, encoding)):
            if row in wanted:
                found[row] = number
            if row >= last:
                break
    return [found.get(int(r), -1) for r in rows]


def error_text(err: Exception) -> str:
    """The first line of a library's exception message (pandas and pyarrow add context lines)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_delimited(
    path: Path,
    fmt: TextFormat,
    encoding: str,
    *,
    what: str,
    int_columns: Sequence[str] = (),
    float_columns: Sequence[str] = (),
    required: Sequence[str] = (),
    all_str: bool = False,
) -> pd.DataFrame:
    """Parses a delimited file with pandas, turning every failure into a `DataError`.

    Args:
        path: The file.
        fmt: Separator, field names of a headerless file, quoting.
        encoding: Codec of the file.
        what: What the file is, for the "not found" message.
        int_columns: Columns that must hold integers; returned as int64.
        float_columns: Columns that must hold numbers (or be empty); returned as float64.
        required: Columns that must not be empty.
        all_str: Read every other column as strings (metadata files).

    Returns:
        The table, with ``fmt.names`` as columns for a headerless file.

    Raises:
        DataError: Missing or empty file, undecodable bytes, malformed lines.
    """
    check_file(path, what)
    encoding = _check_encoding(encoding)
    header = None if fmt.names is not None else 0
    options: dict[str, Any] = {
        "header": header,
        "encoding": encoding,
        "quoting": csv.QUOTE_MINIMAL if fmt.quoted else csv.QUOTE_NONE,
        "keep_default_na": False,
        "na_values": [""],
        "skip_blank_lines": True,
        "engine": "c",
    }
    if all_str:
        options["dtype"] = str

    def scan() -> None:
        _scan_for_bad_line(path, fmt, encoding, int_columns, float_columns, required)

    try:
        if len(fmt.sep) == 1:
            frame = pd.read_csv(path, sep=fmt.sep, **options)
        else:
            # pandas needs its slow python engine for multi-character separators; MovieLens
            # 1M never uses the unit separator, so swap it in and keep the C parser.
            with _open_binary(path) as handle:
                text = handle.read().decode(encoding)
            text = text.replace(fmt.sep, "\x1f")
            options.pop("encoding")
            frame = pd.read_csv(io.StringIO(text), sep="\x1f", **options)
    except UnicodeDecodeError:
        _raise_decode_error(path, encoding)
        raise DataError(
            f"cannot decode the file as {encoding}", source=str(path), hint=_ENCODING_HINT
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", source=str(path), hint=f"expected {what}") from None
    except (pd.errors.ParserError, ValueError, csv.Error) as err:
        scan()
        raise DataError(
            f"cannot parse the file: {error_text(err)}",
            source=str(path),
            hint="check the separator, quoting and encoding",
        ) from None

    if fmt.names is not None:
        if frame.shape[1] != len(fmt.names):
            scan()
            raise DataError(
                f"expected {len(fmt.names)} fields per line, found {frame.shape[1]}",
                source=str(path),
                hint=f"is this really {what}?",
            )
        frame.columns = list(fmt.names)
    else:
        frame.columns = [str(c).strip() for c in frame.columns]

    problem = False
    for column in required:
        if column in frame.columns and frame[column].isna().any():
            problem = True
    for column in int_columns:
        if column in frame.columns and not is_int_column(frame[column]):
            converted = pd.to_numeric(frame[column], errors="coerce")
            if converted.isna().any() or not np.array_equal(
                converted.to_numpy(np.float64), np.floor(converted.to_numpy(np.float64))
            ):
                problem = True
            else:
                frame[column] = converted.astype(np.int64)
    for column in float_columns:
        if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
            converted = pd.to_numeric(frame[column], errors="coerce")
            if (converted.isna() & frame[column].notna()).any():
                problem = True
            else:
                frame[column] = converted.astype(np.float64)
    if problem:
        scan()
        raise DataError(
            "some values are missing or malformed",
            source=str(path),
            hint="check the separator, quoting and encoding",
        )
    for column in int_columns:
        if column in frame.columns:
            frame[column] = frame[column].astype(np.int64)
    return frame


def read_parquet(path: Path, read: Callable[[Path], _Table], *, hint: str) -> _Table:
    """Reads a Parquet file with ``read``, turning any failure into a `DataError`.

    Args:
        path: The file.
        read: ``pandas.read_parquet`` or ``pyarrow.parquet.read_table``.
        hint: What to do about an unreadable file, for the message.

    Returns:
        What ``read`` returns.

    Raises:
        DataError: ``cannot read as Parquet`` and the library's first line of explanation.
    """
    try:
        return read(path)
    except Exception as err:  # pyarrow raises several unrelated types on a bad file
        raise DataError(
            f"cannot read as Parquet: {error_text(err)}", source=str(path), hint=hint
        ) from None


def is_int_column(series: pd.Series) -> bool:
    """Whether ``series`` already has an integer dtype (bool, an integer subtype, is not)."""
    return pd.api.types.is_integer_dtype(series) and not pd.api.types.is_bool_dtype(series)


def location(path: Path, fmt: TextFormat | None, encoding: str, row: int) -> dict[str, Any]:
    """Where data row ``row`` is, as `DataError` keyword arguments.

    Args:
        path: The file the table came from.
        fmt: Its text format, or ``None`` for Parquet.
        encoding: Codec of a text file.
        row: 0-based data row, as pandas counts them.

    Returns:
        ``{"line": n}`` for a text file; nothing for Parquet, whose message names the row
        through `row_text` instead.
    """
    if fmt is None:
        return {}
    return {"line": line_numbers(path, fmt, encoding, [row])[0]}


def row_text(fmt: TextFormat | None, row: int) -> str:
    """``" (row n)"`` (1-based) for Parquet, where there is no line to name; else nothing."""
    return "" if fmt is not None else f" (row {row + 1})"

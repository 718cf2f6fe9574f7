"""Reward tables from files: RouterBench CSV, CSV.gz and Parquet.

A reward table has one row per prompt and, per model, a score in [0, 1] and a cost in USD.
Two column conventions are read:

- ``<model>|score`` + ``<model>|cost`` (the bundled ``streams/data`` table);
- ``<model>`` (score) + ``<model>|total_cost`` (the original RouterBench naming).

A bare column is a model's score only when a cost column for that model exists; other
unrecognised columns (``prompt``, ``<model>|model_response``, ``oracle_model_to_route_to``, ...)
are ignored. A blank score or cost is a missing outcome and stays ``NaN``: nothing is imputed.

Every problem with a file raises ``DataError``, whose message names the file, the place
(``line N``: physical line, 1-based, header = line 1; ``row N`` for Parquet: 1-based data row)
and/or the column, and what is wrong.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt

from stageroute.backtest.table import RewardTable

__all__ = ["DataError", "RewardTable", "StrPath", "load_table"]

FloatArray = npt.NDArray[np.float64]
StrPath = str | os.PathLike[str]

METADATA_COLUMNS: Final = frozenset(
    {"sample_id", "eval_name", "prompt", "oracle_model_to_route_to"}
)
"""Known non-model columns; ``sample_id`` and ``eval_name`` are read, the others ignored."""
_SCORE_SUFFIXES: Final = ("score",)
_COST_SUFFIXES: Final = ("cost", "total_cost")
# Cell texts read as a missing outcome, besides the blank cell (case-insensitive).
_MISSING_TEXT: Final = frozenset({"", "nan", "na", "n/a", "null", "none"})


class DataError(ValueError):
    """A data file is missing, unreadable or invalid.

    ``str()`` reads ``"<file>: line 7, column 'gpt-4|cost': negative cost -0.5"``; the parts
    are also attributes (``line``/``row``/``column`` are ``None`` when not applicable).
    """

    def __init__(
        self,
        path: StrPath,
        problem: str,
        line: int | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.line = line
        self.column = column
        self.row = row
        place = [f"line {line}"] if line is not None else []
        place += [f"row {row}"] if row is not None else []
        place += [f"column {column!r}"] if column is not None else []
        super().__init__(": ".join([self.path, *([", ".join(place)] if place else []), problem]))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem, self.line, self.column, self.row))


@dataclass(frozen=True)
class _Raw:
    """A table as read from disk, before interpretation; columns are converted on demand."""

    header: list[str]
    n_rows: int
    cells: Callable[[int], Sequence[Any]]  # column j as Python values (str for CSV)
    floats: Callable[[int], FloatArray | None]  # column j as float64 if stored as numbers
    lines: list[int] | None  # CSV: physical line where each row starts; Parquet: None

    def where(self, i: int) -> dict[str, int]:
        return {"line": self.lines[i]} if self.lines is not None else {"row": i + 1}


@dataclass(frozen=True)
class _Layout:
    models: list[str]
    score_cols: list[int]
    cost_cols: list[int]
    sample_id_col: int | None
    eval_name_col: int | None


def load_table(path: StrPath) -> RewardTable:
    """Read a reward table from ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq``.

    Raises ``DataError`` for a missing/unreadable/empty file, no model columns, a score column
    without a cost column (or vice versa), a duplicate column, a non-numeric cell, a score
    outside [0, 1], or a negative or non-finite cost.
    """
    name = os.fspath(path)
    if not Path(name).is_file():
        raise DataError(name, "no such file" if not Path(name).exists() else "not a regular file")
    lower = name.lower()
    if lower.endswith((".parquet", ".pq")):
        raw = _read_parquet(name)
    elif lower.endswith((".csv", ".csv.gz")):
        raw = _read_csv(name, gzipped=lower.endswith(".gz"))
    else:
        raise DataError(name, "unsupported file type (expected .csv, .csv.gz, .parquet or .pq)")
    if raw.n_rows == 0:
        raise DataError(name, "empty table: a header but no data rows")
    layout = _layout(name, raw.header)
    n = raw.n_rows
    return RewardTable(
        models=tuple(layout.models),
        sample_ids=_texts(raw, layout.sample_id_col) or tuple(str(i) for i in range(n)),
        tasks=_texts(raw, layout.eval_name_col) or ("",) * n,
        scores=np.column_stack([_numbers(name, raw, j, _score_problem) for j in layout.score_cols]),
        costs=np.column_stack([_numbers(name, raw, j, _cost_problem) for j in layout.cost_cols]),
        source=name,
    )


def _read_csv(name: str, *, gzipped: bool) -> _Raw:
    # RouterBench few-shot prompts can exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    rows: list[list[str]] = []
    lines: list[int] = []
    line = 1
    try:
        with _open_text(name, gzipped) as text:
            reader = csv.reader(text, strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError(name, "empty file: no header line")
            line = reader.line_num + 1
            for record in reader:
                if record:  # the csv module yields [] for a blank line
                    if len(record) != len(header):
                        problem = f"{len(record)} fields, the header has {len(header)}"
                        raise DataError(name, problem, line=line)
                    rows.append(record)
                    lines.append(line)
                line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(name, f"malformed CSV: {exc}", line=line) from None
    except UnicodeDecodeError as exc:
        raise DataError(name, f"not UTF-8 text: {exc}") from None
    except (OSError, EOFError) as exc:  # includes a corrupt or truncated gzip stream
        raise DataError(name, f"unreadable: {exc}") from None
    return _Raw(
        header=[column.strip() for column in header],
        n_rows=len(rows),
        cells=lambda j: [row[j] for row in rows],
        floats=lambda j: None,
        lines=lines,
    )


def _open_text(name: str, gzipped: bool) -> IO[str]:
    if gzipped:
        return gzip.open(name, "rt", encoding="utf-8-sig", newline="")
    return open(name, encoding="utf-8-sig", newline="")


def _read_parquet(name: str) -> _Raw:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(name, "reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(name)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(name, f"unreadable Parquet file: {exc}") from None

    def floats(j: int) -> FloatArray | None:
        column, kind = table.column(j), table.schema.field(j).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            return None
        values = column.cast(pa.float64()).fill_null(float("nan")).to_numpy()
        return np.asarray(values, dtype=np.float64)

    return _Raw(
        header=[str(column).strip() for column in table.column_names],
        n_rows=table.num_rows,
        cells=lambda j: table.column(j).to_pylist(),
        floats=floats,
        lines=None,
    )


def _layout(name: str, header: list[str]) -> _Layout:
    """Which columns hold each model's score and cost, and the metadata columns."""
    metadata: dict[str, int] = {}
    scores: dict[str, int] = {}
    costs: dict[str, int] = {}
    bare: dict[str, list[int]] = {}

    def claim(found: dict[str, int], key: str, j: int) -> None:
        if key in found:
            problem = f"duplicate column (also column {found[key] + 1}, {header[found[key]]!r})"
            raise DataError(name, problem, column=header[j])
        found[key] = j

    for j, column in enumerate(header):
        model, bar, suffix = column.rpartition("|")
        if column in METADATA_COLUMNS:
            claim(metadata, column, j)
        elif bar and model and suffix in _SCORE_SUFFIXES:
            claim(scores, model, j)
        elif bar and model and suffix in _COST_SUFFIXES:
            claim(costs, model, j)
        elif not bar:
            bare.setdefault(column, []).append(j)
    for model, columns in bare.items():
        if model in costs:  # a bare column is a score only beside a cost column
            for j in columns:
                claim(scores, model, j)
    _check_pairs(name, header, scores, costs)
    models = sorted(scores, key=scores.__getitem__)  # header order of the score columns
    return _Layout(
        models=models,
        score_cols=[scores[m] for m in models],
        cost_cols=[costs[m] for m in models],
        sample_id_col=metadata.get("sample_id"),
        eval_name_col=metadata.get("eval_name"),
    )


def _check_pairs(
    name: str, header: list[str], scores: dict[str, int], costs: dict[str, int]
) -> None:
    for model, j in scores.items():
        if model not in costs:
            problem = f"score column without a cost column ({model + '|cost'!r})"
            raise DataError(name, problem, column=header[j])
    for model, j in costs.items():
        if model not in scores:
            problem = f"cost column without a score column ({model + '|score'!r} or {model!r})"
            raise DataError(name, problem, column=header[j])
    if not scores:
        raise DataError(
            name,
            "no model columns: expected '<model>|score' + '<model>|cost' "
            "or '<model>' + '<model>|total_cost' pairs",
        )


def _numbers(name: str, raw: _Raw, j: int, check: _Check) -> FloatArray:
    """Column ``j`` as float64 (missing = NaN), after ``check`` has found no bad value."""
    values = raw.floats(j)
    if values is None:
        cells = raw.cells(j)
        values = np.empty(len(cells), dtype=np.float64)
        for i, cell in enumerate(cells):
            try:
                values[i] = _to_float(cell)
            except ValueError:
                problem = f"not a number: {cell!r}"
                raise DataError(name, problem, column=raw.header[j], **raw.where(i)) from None
    bad = check(values)
    if bad is not None:
        i, problem = bad
        raise DataError(name, problem, column=raw.header[j], **raw.where(i))
    return values


def _to_float(cell: object) -> float:
    if cell is None:
        return float("nan")
    if isinstance(cell, str):
        text = cell.strip()
        return float("nan") if text.lower() in _MISSING_TEXT else float(text)
    if isinstance(cell, int | float) and not isinstance(cell, bool):
        return float(cell)
    raise ValueError(cell)


_Check = Callable[[FloatArray], "tuple[int, str] | None"]


def _score_problem(values: FloatArray) -> tuple[int, str] | None:
    bad = np.flatnonzero((values < 0) | (values > 1))  # NaN (missing) compares False
    if bad.size == 0:
        return None
    i = int(bad[0])
    return i, f"score {float(values[i])!r} outside [0, 1]"


def _cost_problem(values: FloatArray) -> tuple[int, str] | None:
    bad = np.flatnonzero(np.isinf(values) | (values < 0))  # NaN (missing) is allowed
    if bad.size == 0:
        return None
    i = int(bad[0])
    value = float(values[i])
    return i, f"{'non-finite' if np.isinf(value) else 'negative'} cost {value!r}"


def _texts(raw: _Raw, j: int | None) -> tuple[str, ...] | None:
    if j is None:
        return None
    return tuple("" if cell is None else str(cell) for cell in raw.cells(j))



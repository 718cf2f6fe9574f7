"""streams.tables and streams.eventlog: reward tables (CSV, CSV.gz, Parquet), the bundled
data, JSONL event logs."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import pickle
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    DeadLetterReason,
    Event,
    EventRejected,
    Feedback,
    ModelArrived,
    ModelExpired,
    Query,
    QueryFeatures,
    StageBoundary,
    encode,
)
from streams.data import BUNDLED_TABLE, DEFAULT_SCHEDULE
from streams.eventlog import load_event_log, write_event_log
from streams.tables import DataError, RewardTable, load_table

WIZARD = "WizardLM/WizardLM-13B-V1.2"
HEADER = "sample_id,eval_name,prompt,a|score,a|cost,b|score,b|cost"
ROWS = ["q1,mbpp,hi,1,0.5,0,0.25", "q2,winogrande,yo,0.5,0.001,,0.125"]

WriteText = Callable[..., Path]


@pytest.fixture
def write_text(tmp_path: Path) -> WriteText:
    """Factory: write ``lines`` to ``tmp_path/name`` (gzip for ``.gz``) and return the path."""

    def write(name: str, *lines: str) -> Path:
        path = tmp_path / name
        data = "".join(line + "\n" for line in lines).encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        return path

    return write


def raises_data_error(path: Path, *fragments: str) -> DataError:
    """Load ``path``, expect a DataError naming the file and every fragment; return it."""
    with pytest.raises(DataError) as caught:
        load_table(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return caught.value


# ---------------------------------------------------------------------------------------------
# The bundled data


@pytest.fixture(scope="module")
def bundled() -> RewardTable:
    return load_table(BUNDLED_TABLE)


def test_bundled_table_shape_and_missing_scores(bundled: RewardTable) -> None:
    assert bundled.n_rows == 2225
    assert len(bundled.models) == 11
    assert bundled.scores.shape == bundled.costs.shape == (2225, 11)
    wizard = bundled.scores[:, bundled.models.index(WIZARD)]
    assert int(np.isnan(wizard).sum()) == 8  # blank in the file, kept missing
    assert np.isfinite(bundled.costs).all() and (bundled.costs >= 0).all()
    observed = bundled.scores[~np.isnan(bundled.scores)]
    assert ((observed >= 0) & (observed <= 1)).all()
    assert sorted(set(bundled.tasks)) == ["arc-challenge", "mbpp", "winogrande"]
    assert bundled.tasks.count("mbpp") == 299
    assert bundled.source == str(BUNDLED_TABLE)


def test_bundled_table_agrees_with_an_independent_reader(bundled: RewardTable) -> None:
    with gzip.open(BUNDLED_TABLE, "rt", encoding="utf-8", newline="") as text:
        rows = list(csv.DictReader(text))
    expected_scores = [[float(r[f"{m}|score"] or "nan") for m in bundled.models] for r in rows]
    expected_costs = [[float(r[f"{m}|cost"]) for m in bundled.models] for r in rows]
    np.testing.assert_array_equal(bundled.scores, expected_scores)
    np.testing.assert_array_equal(bundled.costs, expected_costs)
    assert bundled.sample_ids == tuple(r["sample_id"] for r in rows)


def test_bundled_table_means_ignore_missing(bundled: RewardTable) -> None:
    means = bundled.mean_reward()
    assert means.shape == (11,) and np.isfinite(means).all()
    i = bundled.models.index(WIZARD)
    assert means[i] == pytest.approx(np.nanmean(bundled.scores[:, i]))
    assert (bundled.mean_cost() > 0).all()


def test_table_arrays_are_read_only(bundled: RewardTable) -> None:
    with pytest.raises(ValueError):
        bundled.scores[0, 0] = 0.5


def test_default_schedule_covers_the_bundled_models(bundled: RewardTable) -> None:
    schedule = json.loads(DEFAULT_SCHEDULE.read_text())
    assert schedule["description"]
    entries = schedule["models"]
    assert sorted(e["model_id"] for e in entries) == sorted(bundled.models)
    assert sum(e["arrive"] == 0.0 for e in entries) == 4
    assert all(0 < e["arrive"] <= 0.6 for e in entries if e["arrive"] != 0.0)
    expiring = {e["model_id"]: e["expire"] for e in entries if e["expire"] is not None}
    assert expiring == {"claude-v1": 0.75, "claude-instant-v1": 0.9}


# ---------------------------------------------------------------------------------------------
# Column conventions


def test_score_cost_naming(write_text: WriteText) -> None:
    table = load_table(write_text("t.csv", HEADER, *ROWS))
    assert table.models == ("a", "b")
    assert table.sample_ids == ("q1", "q2")
    assert table.tasks == ("mbpp", "winogrande")
    np.testing.assert_array_equal(table.scores, [[1.0, 0.0], [0.5, np.nan]])
    np.testing.assert_array_equal(table.costs, [[0.5, 0.25], [0.001, 0.125]])
    np.testing.assert_array_equal(table.mean_reward(), [0.75, 0.0])


def test_routerbench_naming_ignores_responses_and_oracle(write_text: WriteText) -> None:
    path = write_text(
        "rb.csv",
        "sample_id,prompt,eval_name,a,b,a|model_response,b|model_response,"
        "a|total_cost,b|total_cost,oracle_model_to_route_to,notes",
        "q1,hi,mbpp,1,0,x,y,0.5,0.25,a,whatever",
        "q2,yo,winogrande,0.5,,x,y,0.001,0.125,b,",
    )
    table = load_table(path)
    reference = load_table(write_text("t.csv", HEADER, *ROWS))
    assert table.models == reference.models
    assert table.tasks == reference.tasks
    np.testing.assert_array_equal(table.scores, reference.scores)
    np.testing.assert_array_equal(table.costs, reference.costs)


def test_model_order_is_header_order_of_score_columns(write_text: WriteText) -> None:
    path = write_text("t.csv", "z|cost,y|score,z|score,y|cost", "0.1,1,0,0.2")
    table = load_table(path)
    assert table.models == ("y", "z")
    np.testing.assert_array_equal(table.costs, [[0.2, 0.1]])


def test_missing_sample_id_and_eval_name_default(write_text: WriteText) -> None:
    table = load_table(write_text("t.csv", "a|score,a|cost", "1,0.1", "", "0,0.2"))
    assert table.sample_ids == ("0", "1")
    assert table.tasks == ("", "")


def test_missing_cells_stay_missing(write_text: WriteText) -> None:
    path = write_text("t.csv", "a|score,a|cost,b|score,b|cost", " ,NaN,NA,", ",,1, 0.5 ")
    table = load_table(path)
    assert np.isnan(table.scores[:, 0]).all() and np.isnan(table.costs[0]).all()
    np.testing.assert_array_equal(table.scores[:, 1], [np.nan, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        means = table.mean_reward()  # an all-missing model: NaN, no RuntimeWarning
    assert math.isnan(means[0]) and means[1] == 1.0


def test_gzip_csv_equals_plain_csv(write_text: WriteText) -> None:
    plain = load_table(write_text("t.csv", HEADER, *ROWS))
    packed = load_table(write_text("t.csv.gz", HEADER, *ROWS))
    np.testing.assert_array_equal(plain.scores, packed.scores)
    np.testing.assert_array_equal(plain.costs, packed.costs)
    assert plain.sample_ids == packed.sample_ids


# ---------------------------------------------------------------------------------------------
# Parquet


def _write_parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_roundtrip_of_the_bundled_table(
    bundled: RewardTable, tmp_path: Path, suffix: str
) -> None:
    columns: dict[str, list[object]] = {
        "sample_id": list(bundled.sample_ids),
        "eval_name": list(bundled.tasks),
    }
    for j, model in enumerate(bundled.models):
        scores = bundled.scores[:, j]
        columns[f"{model}|score"] = [None if math.isnan(v) else float(v) for v in scores]
        columns[f"{model}|cost"] = bundled.costs[:, j].tolist()
    back = load_table(_write_parquet(tmp_path / f"t{suffix}", columns))
    assert (back.models, back.sample_ids, back.tasks) == (
        bundled.models,
        bundled.sample_ids,
        bundled.tasks,
    )
    np.testing.assert_array_equal(back.scores, bundled.scores)
    np.testing.assert_array_equal(back.costs, bundled.costs)


def test_parquet_routerbench_naming_with_integer_ids(tmp_path: Path) -> None:
    path = _write_parquet(
        tmp_path / "rb.parquet",
        {"sample_id": [7, 8], "a": [1, None], "a|total_cost": [0.5, 0.25], "prompt": ["x", "y"]},
    )
    table = load_table(path)
    assert table.models == ("a",) and table.sample_ids == ("7", "8")
    np.testing.assert_array_equal(table.scores, [[1.0], [np.nan]])


def test_parquet_errors_name_the_row_and_column(tmp_path: Path) -> None:
    path = _write_parquet(
        tmp_path / "bad.parquet", {"a|score": [0.5, 0.25, 2.0], "a|cost": [0.1, 0.1, 0.1]}
    )
    error = raises_data_error(path, "row 3", "'a|score'", "outside [0, 1]")
    assert (error.row, error.column, error.line) == (3, "a|score", None)
    text_scores = _write_parquet(
        tmp_path / "text.parquet", {"a|score": ["1", "oops"], "a|cost": [0.1, 0.1]}
    )
    raises_data_error(text_scores, "row 2", "'a|score'", "'oops'")


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"this is not parquet")
    raises_data_error(path, "unreadable Parquet")


# ---------------------------------------------------------------------------------------------
# Errors: each names the file and the line or column


@pytest.mark.parametrize(
    ("lines", "line", "column", "problem"),
    [
        ([HEADER, ROWS[0], "q2,m,p,abc,0.1,1,0.1"], 3, "a|score", "not a number: 'abc'"),
        ([HEADER, ROWS[0], "q2,m,p,1,cheap,1,0.1"], 3, "a|cost", "not a number: 'cheap'"),
        ([HEADER, "q1,m,p,1.5,0.1,1,0.1"], 2, "a|score", "score 1.5 outside [0, 1]"),
        ([HEADER, ROWS[0], "q2,m,p,1,0.1,-0.2,0.1"], 3, "b|score", "outside [0, 1]"),
        ([HEADER, ROWS[0], *ROWS, "q4,m,p,1,0.1,1,-1e-3"], 5, "b|cost", "negative cost -0.001"),
        ([HEADER, "q1,m,p,1,inf,1,0.1"], 2, "a|cost", "non-finite cost inf"),
        ([HEADER, "q1,m,p,1,0.1,1,0.1", "", "", "q2,m,p,1,0.1,1,-5"], 5, "b|cost", "negative"),
        ([HEADER, ROWS[0], "q2,m,p,1,0.1"], 3, None, "5 fields, the header has 7"),
    ],
)
def test_bad_cells_name_line_and_column(
    write_text: WriteText, lines: list[str], line: int, column: str | None, problem: str
) -> None:
    path = write_text("bad.csv", *lines)
    error = raises_data_error(path, f"line {line}", problem)
    assert (error.line, error.column) == (line, column)
    if column is not None:
        assert repr(column) in str(error)


def test_line_numbers_count_physical_lines_of_multiline_prompts(write_text: WriteText) -> None:
    path = write_text("t.csv", "prompt,a|score,a|cost", '"two\nlines",1,0.1', "p,1,-1")
    raises_data_error(path, "line 4", "'a|cost'", "negative")


@pytest.mark.parametrize(
    ("header", "column", "problem"),
    [
        ("a|score,a|cost,a|score,x", "a|score", "duplicate column"),
        ("a|score,a|cost,a|total_cost", "a|total_cost", "duplicate column"),
        ("a|score,a|cost,a", "a", "duplicate column"),
        ("sample_id,a|score,a|cost,sample_id", "sample_id", "duplicate column"),
        ("a|score,b|score,b|cost", "a|score", "without a cost column ('a|cost')"),
        ("a|score,a|cost,b|total_cost", "b|total_cost", "without a score column"),
        ("a|cost", "a|cost", "without a score column ('a|score' or 'a')"),
    ],
)
def test_bad_headers_name_the_column(
    write_text: WriteText, header: str, column: str, problem: str
) -> None:
    width = header.count(",") + 1
    path = write_text("bad.csv", header, ",".join(["0"] * width))
    error = raises_data_error(path, repr(column), problem)
    assert error.column == column


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ((), "empty file: no header"),
        ((HEADER,), "header but no data rows"),
        ((HEADER, "", ""), "header but no data rows"),
        (("sample_id,prompt,a,a|model_response", "q,p,1,x"), "no model columns"),
    ],
)
def test_empty_or_modelless_files(
    write_text: WriteText, lines: tuple[str, ...], problem: str
) -> None:
    raises_data_error(write_text("t.csv", *lines), problem)


def test_missing_file(tmp_path: Path) -> None:
    raises_data_error(tmp_path / "absent.csv", "no such file")


def test_unsupported_extension(write_text: WriteText) -> None:
    raises_data_error(write_text("t.tsv", HEADER, *ROWS), "unsupported file type")


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(("\n".join([HEADER, *ROWS]) + "\n").encode())[:-12])
    raises_data_error(path, "unreadable")
    plain_bytes = tmp_path / "plain.csv.gz"
    plain_bytes.write_text(HEADER + "\n")
    raises_data_error(plain_bytes, "unreadable")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes((HEADER + "\n").encode() + b"q,m,\xff\xfe,1,0.1,1,0.1\n")
    raises_data_error(path, "not UTF-8")


def test_data_error_is_a_picklable_value_error(write_text: WriteText) -> None:
    error = raises_data_error(write_text("t.csv", HEADER, "q,m,p,2,0.1,1,0.1"), "line 2")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.line == 2 and copy.column == "a|score"


def test_reward_table_validates_direct_construction() -> None:
    def table(scores: list[list[float]]) -> RewardTable:
        return RewardTable(("a",), ("q",), ("",), np.array(scores), np.array([[0.1]]))

    assert table([[0.5]]).n_rows == 1
    with pytest.raises(ValueError, match="shape"):
        table([[0.5], [0.5]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        table([[1.5]])


# ---------------------------------------------------------------------------------------------
# Property: any valid table written as CSV reads back exactly

_score = st.one_of(st.none(), st.floats(0.0, 1.0))
_cost = st.one_of(st.none(), st.floats(0.0, 1e3))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3).flatmap(lambda m: st.lists(st.tuples(*[_score, _cost] * m), min_size=1)))
def test_csv_roundtrip_property(rows: list[tuple[float | None, ...]]) -> None:
    n_models = len(rows[0]) // 2
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([f"m{k}|{kind}" for k in range(n_models) for kind in ("score", "cost")])
    writer.writerows([["" if v is None else repr(v) for v in row] for row in rows])
    expected = np.array([[math.nan if v is None else v for v in row] for row in rows])
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "p.csv"
        path.write_text(out.getvalue())
        table = load_table(path)
    np.testing.assert_array_equal(table.scores, expected[:, 0::2])
    np.testing.assert_array_equal(table.costs, expected[:, 1::2])


# ---------------------------------------------------------------------------------------------
# Event logs


def _events() -> list[Event]:
    return [
        ModelArrived(time=0.0, model_id="claude-v2", alpha=0.5, cost_min=0.0, cost_max=0.02),
        StageBoundary(time=0.0, stage=0),
        Query(time=1.5, query_id="q1", features=QueryFeatures(task="mbpp", prompt_tokens=12)),
        Feedback(time=2.25, query_id="q1", model_id="claude-v2", reward=1.0, cost=0.0031),
        ModelExpired(time=3.0, model_id="claude-v2", domain="eu"),
    ]


@pytest.mark.parametrize("name", ["log.jsonl", "log.jsonl.gz"])
def test_event_log_roundtrip(tmp_path: Path, name: str) -> None:
    events = _events()
    path = tmp_path / name
    assert write_event_log(path, events) == len(events)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert list(load_event_log(path)) == list(enumerate(events, start=1))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no partial file left behind


def test_event_log_bad_lines_are_rejected_with_their_line_number(tmp_path: Path) -> None:
    good = encode(_events()[1]).decode()
    bad_reward = json.dumps(
        {"type": "feedback", "time": 1, "query_id": "q", "model_id": "m", "reward": 1.5, "cost": 0}
    )
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join([good, "", "{not json", "   ", bad_reward, good]) + "\n")
    decoded = list(load_event_log(path))
    assert [number for number, _ in decoded] == [1, 3, 5, 6]
    assert decoded[0][1] == decoded[3][1] == _events()[1]
    rejected = [item for _, item in decoded[1:3] if isinstance(item, EventRejected)]
    assert len(rejected) == 2
    assert [item.reason for item in rejected] == [
        DeadLetterReason.MALFORMED,
        DeadLetterReason.REWARD_OUT_OF_RANGE,
    ]
    assert rejected[0].payload == "{not json"


def test_event_log_missing_file_raises_at_call(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as caught:
        load_event_log(tmp_path / "absent.jsonl")  # no iteration needed
    assert str(tmp_path / "absent.jsonl") in str(caught.value)


def test_event_log_truncated_gzip_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    write_event_log(path, _events() * 200)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"line \d+: unreadable"):
        list(load_event_log(path))


def test_write_event_log_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_event_log(path, _events())
    before = path.read_bytes()

    def failing() -> Iterator[Event]:
        yield _events()[0]
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        write_event_log(path, failing())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]

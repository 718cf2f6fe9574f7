"""The CLI as a user runs it: bad flags and files fail with exit 2 and say what and where."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.data import BUNDLED_TABLE


def stageroute(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def backtest(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return stageroute("backtest", "--no-audit", "--quiet", "--horizon", "300", *args, cwd=cwd)


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_help_explains_the_budget_convention() -> None:
    result = stageroute("backtest", "--help")
    assert result.returncode == 0
    assert "beta times the highest mean per-query cost" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--beta", "0"], "--beta: expected a number > 0"),
        (["--beta", "-0.2"], "--beta: expected a number > 0"),
        (["--horizon", "abc"], "--horizon: expected a whole number"),
        (["--m-max", "0"], "--m-max: expected a whole number >= 1"),
        (["--alpha", "1.5"], "--alpha: a throughput share must be in (0, 1]"),
        (["--gamma", "nan"], "--gamma: expected a number > 0"),
        (["--policies", "stageroute,nope"], "--policies: unknown nope"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flags: list[str], message: str) -> None:
    result = backtest(*flags)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "streams.cli", "backtest", "--no-audit",
                             "--quiet"], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "STAGEROUTE_M_MAX": "many"})
    assert result.returncode == 2
    assert "environment STAGEROUTE_M_MAX: expected a whole number" in result.stderr


def test_missing_column_names_the_column(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "t.csv", ["sample_id,a|score,a|cost,b|score", "1,1,0.1,0"])
    result = backtest("--data", str(data))
    assert result.returncode == 2
    assert str(data) in result.stderr and "b|score" in result.stderr


def test_non_numeric_score_names_line_and_column(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "t.csv",
                     ["sample_id,a|score,a|cost", "1,1,0.1", "2,abc,0.1"])
    result = backtest("--data", str(data))
    assert result.returncode == 2
    assert "line 3" in result.stderr and "a|score" in result.stderr and "abc" in result.stderr


def test_empty_file(tmp_path: Path) -> None:
    data = tmp_path / "empty.csv"
    data.write_text("")
    result = backtest("--data", str(data))
    assert result.returncode == 2
    assert str(data) in result.stderr


def test_unknown_model_in_scenario(tmp_path: Path) -> None:
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({"models": [{"model_id": "gpt-99", "arrive": 0.0}]}))
    result = backtest("--scenario", str(scenario))
    assert result.returncode == 2
    assert "models[0]" in result.stderr and "gpt-99" in result.stderr


def test_config_file_supplies_options_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('m_max = 2\nbeta = 0.7\npolicies = "greedy"\n')
    out = tmp_path / "summary.json"
    result = stageroute("--config", str(config), "backtest", "--no-audit", "--quiet",
                        "--horizon", "400", "--beta", "0.5", "--json", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["m_max"] == 2 and summary["beta"] == 0.5
    assert [p["policy"] for p in summary["policies"]] == ["greedy"]


def test_json_summary_has_the_documented_fields(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    report = tmp_path / "report.html"
    result = backtest("--json", str(out), "--report", str(report), "--policies",
                      "stageroute,random")
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    for row in summary["policies"]:
        for key in ("avg_reward", "avg_cost", "budget", "oracle_avg_reward", "pct_of_oracle",
                    "queries", "seconds", "run_id"):
            assert key in row
        assert row["queries"] == 300
    page = report.read_text()
    assert page.startswith("<!doctype html>") and "Plotly.newPlot" in page


def test_original_routerbench_naming_and_gzip(tmp_path: Path) -> None:
    # RouterBench's own naming: <model> for the score and <model>|total_cost for the cost.
    lines = ["sample_id,eval_name,m1,m1|total_cost,m2,m2|total_cost"]
    lines += [f"{i},task,{i % 2},0.001,1,0.01" for i in range(20)]
    data = tmp_path / "rb.csv.gz"
    with gzip.open(data, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    out = tmp_path / "s.json"
    result = backtest("--data", str(data), "--json", str(out), "--m-max", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["scenario"] == "all models live from the start"


def test_bundled_table_is_shipped() -> None:
    assert BUNDLED_TABLE.exists()

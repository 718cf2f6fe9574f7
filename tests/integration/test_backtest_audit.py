"""The main job against a real PostgreSQL: backtest writes the audit trail, verify proves it,
and a tampered row is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from streams.audit.db import make_engine

pytestmark = pytest.mark.integration


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture
def backtest_run(migrated_db: str, tmp_path: Path) -> dict[str, Any]:
    summary = tmp_path / "summary.json"
    result = cli("backtest", "--quiet", "--horizon", "3000", "--policies", "stageroute,greedy",
                 "--seed", "0", "--db-url", migrated_db, "--json", str(summary), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return {"db": migrated_db, "cwd": tmp_path, "summary": json.loads(summary.read_text())}


def test_backtest_writes_every_decision_and_verify_passes(backtest_run: dict[str, Any]) -> None:
    db, cwd = backtest_run["db"], backtest_run["cwd"]
    run_id = backtest_run["summary"]["policies"][0]["run_ids"][0]
    with make_engine(db).connect() as conn:
        routed = conn.execute(text("SELECT count(*), count(DISTINCT query_id) FROM "
                                   "routing_decisions WHERE run_id = :r"), {"r": run_id}).one()
        runs = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
    assert tuple(routed) == (3000, 3000)
    assert runs == 4  # oracle, stageroute, greedy, and the contextual oracle (tasks in the data)
    result = cli("audit", "--db-url", db, "verify", run_id, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "verified: 0 mismatches" in result.stdout
    listing = cli("audit", "--db-url", db, "runs", cwd=cwd)
    assert run_id[:8] in listing.stdout


@pytest.mark.parametrize(
    ("column", "value"),
    [("model_id", "'tampered-model'"), ("p", "'[1.0]'::jsonb"), ("budget", "budget * 2")],
)
def test_verify_detects_a_tampered_decision(backtest_run: dict[str, Any], column: str,
                                            value: str) -> None:
    db, cwd = backtest_run["db"], backtest_run["cwd"]
    run_id = backtest_run["summary"]["policies"][0]["run_ids"][0]
    with make_engine(db).begin() as conn:
        conn.execute(text(f"UPDATE routing_decisions SET {column} = {value} "
                          "WHERE run_id = :r AND query_id = 'q1234'"), {"r": run_id})
    result = cli("audit", "--db-url", db, "verify", run_id, cwd=cwd)
    assert result.returncode == 1
    assert "q1234" in result.stderr and "MISMATCH" in result.stderr


def test_verify_detects_a_deleted_decision(backtest_run: dict[str, Any]) -> None:
    db, cwd = backtest_run["db"], backtest_run["cwd"]
    run_id = backtest_run["summary"]["policies"][0]["run_ids"][0]
    with make_engine(db).begin() as conn:
        conn.execute(text("DELETE FROM routing_decisions WHERE run_id = :r AND query_id = 'q7'"),
                     {"r": run_id})
    result = cli("audit", "--db-url", db, "verify", run_id, cwd=cwd)
    assert result.returncode == 1
    assert "'q7'" in result.stderr and "not stored" in result.stderr


def test_export_and_decision_queries(backtest_run: dict[str, Any]) -> None:
    db, cwd = backtest_run["db"], backtest_run["cwd"]
    run_id = backtest_run["summary"]["policies"][0]["run_ids"][0]
    out = cwd / "routing.csv"
    assert cli("audit", "--db-url", db, "export", run_id, "--to", str(out), cwd=cwd).returncode == 0
    assert len(out.read_text().splitlines()) == 3001  # header + one row per query
    one = cli("audit", "--db-url", db, "decisions", run_id, "--query", "q5", cwd=cwd)
    assert json.loads(one.stdout.splitlines()[0])["query_id"] == "q5"
    stage = cli("audit", "--db-url", db, "decisions", run_id, "--stage", "3", "--limit", "5",
                cwd=cwd)
    rows = [json.loads(line) for line in stage.stdout.splitlines() if line.startswith("{")]
    assert rows and all(r["stage"] == 3 for r in rows)
    missing = cli("audit", "--db-url", db, "show", "00000000-0000-0000-0000-000000000000",
                  cwd=cwd)
    assert missing.returncode == 2 and "no run" in missing.stderr


def test_stored_summary_has_what_the_cli_printed(migrated_db: str, tmp_path: Path) -> None:
    db, cwd = migrated_db, tmp_path
    out = tmp_path / "summary.json"
    result = cli("backtest", "--quiet", "--horizon", "1000", "--policies", "stageroute,greedy",
                 "--seeds", "2", "--db-url", db, "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    row = summary["per_seed"][1]["policies"][0]
    shown = cli("audit", "--db-url", db, "show", row["run_id"], "--json", cwd=cwd)
    stored = json.loads(shown.stdout)
    assert stored["invocation_id"] == summary["invocation_id"]
    for key in ("regret", "pct_of_oracle", "oracle_avg_reward", "avg_reward"):
        assert stored["summary"][key] == pytest.approx(row[key])
    for key in ("horizon", "stages", "order", "feedback_delay", "seeds", "warning_count"):
        assert stored["summary"][key] == summary[key]
    listing = cli("audit", "--db-url", db, "runs", "--backtest",
                  summary["invocation_id"][:8], "--json", cwd=cwd)
    runs = json.loads(listing.stdout)
    # 2 seeds x (the oracle, the contextual oracle, stageroute, greedy)
    assert len(runs) == 8 and {r["status"] for r in runs} == {"finished"}
    created = [r["created_at"] for r in runs]
    assert created == sorted(created, reverse=True)  # newest first


def test_a_budget_below_every_model_routes_the_cheapest_and_verifies(migrated_db: str,
                                                                      tmp_path: Path) -> None:
    # $0.00005 per query is below every bundled model's mean cost: the defined outcome is the
    # cheapest mix, flagged, counted, and as auditable as any other decision.
    summary_file = tmp_path / "summary.json"
    result = cli("backtest", "--quiet", "--horizon", "1500", "--budget", "0.00005",
                 "--seed", "0", "--policies", "stageroute,stageroute_paper", "--db-url",
                 migrated_db, "--json", str(summary_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(summary_file.read_text())
    oracle, (ours, paper) = summary["oracle"], summary["policies"]
    assert ours["budget_infeasible"] == oracle["budget_infeasible"] == 1500
    assert ours["avg_cost"] == pytest.approx(oracle["avg_cost"])  # the least anyone can spend
    assert ours["over_budget"] and paper["over_budget"]
    assert "over budget" in result.stdout and "below every deployed mix" in result.stdout
    # Warned before the runs: the budget is below what every live model costs.
    assert "budget_below_live_models" in json.dumps(summary["warnings"])
    assert "warning:" in result.stderr
    with make_engine(migrated_db).connect() as conn:
        statuses = conn.execute(text(
            "SELECT status, count(*) FROM routing_decisions WHERE run_id = :r GROUP BY status"),
            {"r": ours["run_id"]}).all()
    assert dict(statuses) == {"budget_infeasible": 1500}
    for run in (ours, paper):
        verified = cli("audit", "--db-url", migrated_db, "verify", run["run_id"], cwd=tmp_path)
        assert verified.returncode == 0, verified.stderr
        assert "verified: 0 mismatches" in verified.stdout


def test_a_contextual_backtest_verifies_and_reports_both_oracles(migrated_db: str,
                                                                 tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    result = cli("backtest", "--quiet", "--horizon", "2000", "--policies", "contextual",
                 "--seed", "0", "--db-url", migrated_db, "--json", str(summary_file),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "contextual_oracle" in result.stdout and "% ctx oracle" in result.stdout
    summary = json.loads(summary_file.read_text())
    (ours,) = summary["policies"]
    assert summary["contextual_oracle"]["policy"] == "contextual_oracle"
    assert ours["oracle_avg_reward"] == summary["oracle"]["avg_reward"]
    assert ours["contextual_oracle_avg_reward"] == summary["contextual_oracle"]["avg_reward"]
    assert ours["pct_of_contextual_oracle"] == pytest.approx(
        100 * ours["avg_reward"] / ours["contextual_oracle_avg_reward"])
    for run in (ours, summary["contextual_oracle"]):
        verified = cli("audit", "--db-url", migrated_db, "verify", run["run_id"], cwd=tmp_path)
        assert verified.returncode == 0, verified.stderr
        assert "verified: 0 mismatches" in verified.stdout
    # A contextual deployment whose stored plan value is below DeployOPT's on its own averages
    # cannot be what the program chose: caught.
    with make_engine(migrated_db).begin() as conn:
        conn.execute(text("UPDATE deployment_decisions SET objective = 0 "
                          "WHERE run_id = :r AND stage = 2"), {"r": ours["run_id"]})
    tampered = cli("audit", "--db-url", migrated_db, "verify", ours["run_id"], cwd=tmp_path)
    assert tampered.returncode == 1 and "below DeployOPT" in tampered.stderr

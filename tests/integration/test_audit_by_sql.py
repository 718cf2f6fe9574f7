"""The audit trail by SQL, as the README shows it, against a real PostgreSQL; an interrupted
backtest is marked and still verifies."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from streams.audit.db import make_engine

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=300)


def readme_sql() -> list[str]:
    section = README.read_text().split("## The audit trail by SQL", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_readme_sql_examples_run_and_the_views_agree(migrated_db: str, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    result = cli("backtest", "--quiet", "--horizon", "400", "--seed", "0", "--policies",
                 "stageroute,greedy", "--db-url", migrated_db, "--json", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    examples = readme_sql()
    assert len(examples) >= 3
    with make_engine(migrated_db).connect() as conn:
        results = [conn.execute(text(sql)).mappings().all() for sql in examples]
        per_run, per_model, deployments, unpacked = results
        # The oracle, the contextual oracle (the bundled table has tasks) and the two policies.
        assert [r["policy"] for r in per_run] != [] and len(per_run) == 4
        assert sum(r["queries"] for r in per_model) == 400
        assert deployments and all(len(r["deployed"].split(", ")) <= 4 for r in deployments)
        assert len([r for r in unpacked if r["drawn"]]) == 1
        assert sum(r["p"] for r in unpacked) == pytest.approx(1.0)

        run_id = summary["policies"][0]["run_id"]
        outcome = conn.execute(text(
            "SELECT count(*) AS n, count(reward) AS answered, min(probability) AS p_min "
            "FROM routing_outcomes WHERE run_id = :r"), {"r": run_id}).mappings().one()
        answered = conn.execute(text(
            "SELECT count(*) FROM event_journal WHERE run_id = :r AND event_type = 'feedback'"),
            {"r": run_id}).scalar_one()
        assert (outcome["n"], outcome["answered"]) == (400, answered)
        assert outcome["p_min"] > 0  # the model drawn always had probability
        stored = conn.execute(text("SELECT avg_reward, regret FROM run_summaries "
                                   "WHERE run_id = :r"), {"r": run_id}).mappings().one()
        assert stored["avg_reward"] == pytest.approx(summary["policies"][0]["avg_reward"])
        assert stored["regret"] == pytest.approx(summary["policies"][0]["regret"])


def test_interrupted_backtest_is_marked_and_verify_says_so(migrated_db: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "backtest", "--quiet", "--horizon", "200000",
         "--seed", "0", "--policies", "stageroute", "--jobs", "1", "--db-url", migrated_db],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = make_engine(migrated_db)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the first batch of the trail is stored
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM event_journal")).scalar_one():
                    break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        engine.dispose()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "marked interrupted" in err
    listing = json.loads(cli("audit", "runs", "--json", "--db-url", migrated_db).stdout)
    assert {r["status"] for r in listing} == {"interrupted"}
    oracle = next(r for r in listing if r["policy"] == "oracle")
    verified = cli("audit", "verify", oracle["run_id"][:8], "--db-url", migrated_db)
    assert verified.returncode == 0, verified.stderr
    assert "interrupted" in verified.stdout and "incomplete" in verified.stdout

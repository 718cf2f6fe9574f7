"""Every user mistake: one line naming what and where, the documented exit code (2 input,
3 service unavailable), found before any long work, and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.audit.store import AuditStore
from tests.synthetic import default_config

USAGE, SERVICE = 2, 3


def stageroute(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_error(result: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    """Exit ``code``, no traceback, exactly one line on stderr, naming each of ``names``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]


# --- backtest: checked before anything runs ----------------------------------------------

@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--seed", "-1"], ["--seed", ">= 0"]),
        (["--horizon", "99999999999999999999"], ["--horizon", "100,000,000"]),
        (["--seeds", "0,0"], ["--seeds"]),
        (["--seed", "1", "--seeds", "3"], ["--seed", "--seeds"]),
        (["--report", "r.pdf"], ["--report", "r.pdf", ".html"]),
        (["--report", "no/such/dir/r.html"], ["--report", "no/such/dir"]),
        (["--json", "no/such/dir/s.json"], ["--json", "no/such/dir"]),
        (["--db-url", "garbage"], ["--db-url", "garbage"]),
        (["--db-url", "sqlite:///audit.db"], ["--db-url", "PostgreSQL"]),
        (["--jobs", "0"], ["--jobs"]),
    ],
)
def test_backtest_mistakes_fail_fast(flags: list[str], names: list[str]) -> None:
    started = time.monotonic()
    # The default horizon and seeds: a check that came after the runs would take minutes.
    result = stageroute("backtest", "--quiet", *flags)
    assert_error(result, USAGE, *names)
    assert time.monotonic() - started < 30


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("mmax = 8\n")
    assert_error(stageroute("backtest", "--config", str(config)), USAGE, str(config), "'mmax'",
                 "m_max")


def test_global_options_work_after_the_command(tmp_path: Path, migrated_db: str) -> None:
    config = tmp_path / "run.toml"
    config.write_text('m_max = 2\npolicies = "greedy"\nhorizon = 200\nseeds = "0,"\n')
    out = tmp_path / "s.json"
    result = stageroute("backtest", "--no-audit", "--quiet", "--config", str(config),
                        "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["m_max"] == 2
    listing = stageroute("audit", "runs", "--db-url", migrated_db)
    assert listing.returncode == 0, listing.stderr
    assert "no runs yet" in listing.stdout


def test_version() -> None:
    result = stageroute("--version")
    assert result.returncode == 0 and result.stdout.startswith("stageroute ")


def test_unreachable_database_is_a_service_error() -> None:
    result = stageroute("audit", "runs", "--db-url", "postgresql://nobody@127.0.0.1:1/x")
    assert_error(result, SERVICE, "database unavailable")


# --- audit: runs that do not exist, or are ambiguous ------------------------------------

@pytest.fixture
def store(migrated_db: str) -> AuditStore:
    return AuditStore(migrated_db)


@pytest.mark.parametrize("action", ["show", "verify", "decisions", "export"])
def test_unknown_run_is_named(migrated_db: str, tmp_path: Path, action: str) -> None:
    extra = ["--to", str(tmp_path / "x.csv")] if action == "export" else []
    result = stageroute("audit", action, "nonexistent", *extra, "--db-url", migrated_db)
    assert_error(result, USAGE, "'nonexistent'", "audit runs")


def test_run_by_name_prefix_and_domain(migrated_db: str, store: AuditStore) -> None:
    config = default_config().model_dump(mode="json")
    eu = store.create_run("live", config, 0, "eu", "stageroute", name="eu-1",
                          run_id="abcd0000-1111-4000-8000-000000000001")
    store.create_run("live", config, 0, "us", "stageroute", name="eu-1",
                     run_id="abcd0000-2222-4000-8000-000000000002")
    ambiguous = stageroute("audit", "show", "eu-1", "--db-url", migrated_db)
    assert_error(ambiguous, USAGE, "'eu-1'", "2 runs", "--domain")
    by_name = stageroute("audit", "show", "eu-1", "--domain", "eu", "--json",
                         "--db-url", migrated_db)
    assert by_name.returncode == 0, by_name.stderr
    assert json.loads(by_name.stdout)["run_id"] == eu
    prefix = stageroute("audit", "show", "abcd0000", "--db-url", migrated_db)
    assert_error(prefix, USAGE, "'abcd0000'", "2 runs", "longer prefix")
    unique = stageroute("audit", "show", eu[:35], "--db-url", migrated_db)
    assert unique.returncode == 0, unique.stderr
    assert "eu-1" in unique.stdout and eu in unique.stdout


def test_audit_export_into_a_missing_directory(migrated_db: str) -> None:
    result = stageroute("audit", "export", "whatever", "--to", "no/such/dir/x.csv",
                        "--db-url", migrated_db)
    assert_error(result, USAGE, "--to", "no/such/dir")


def test_replay_export_into_a_missing_directory(migrated_db: str) -> None:
    result = stageroute("replay", "--from-run", "whatever", "--export", "no/such/dir/x.jsonl",
                        "--db-url", migrated_db)
    assert_error(result, USAGE, "--export", "no/such/dir")


# --- Kafka: an unreachable broker -------------------------------------------------------

@pytest.fixture
def engine_json(tmp_path: Path) -> Path:
    path = tmp_path / "engine.json"
    path.write_text(default_config().model_dump_json())
    return path


@pytest.mark.parametrize(
    "command",
    [
        lambda engine: ["worker", "--engine-config", str(engine), "--run-id", "eu-1"],
        lambda engine: ["topics", "list"],
        lambda engine: ["publish", str(engine)],
    ],
    ids=["worker", "topics-list", "publish"],
)
def test_unreachable_broker_is_one_line(engine_json: Path,
                                        command: Callable[[Path], list[str]]) -> None:
    result = stageroute(*command(engine_json), "--bootstrap", "127.0.0.1:1", timeout=60)
    assert_error(result, SERVICE, "Kafka unavailable at 127.0.0.1:1")

"""``stageroute db``: the embedded database, one per user, kept up for SQL tools until stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from streams.audit.db import make_engine


@pytest.fixture
def db_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pg"
    yield path
    stageroute("db", "stop", env_dir=path)


def stageroute(*args: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    # The environment variable, as a user would set it; no --db-url, so the embedded database.
    env = {k: v for k, v in os.environ.items() if k != "STAGEROUTE_DB_URL"}
    env["STAGEROUTE_EMBEDDED_PG_DIR"] = str(env_dir)
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_db_url_keeps_the_server_up_for_psql_and_sqlalchemy(db_dir: Path) -> None:
    first = stageroute("db", "url", env_dir=db_dir)
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    assert url.startswith("postgresql://")
    # A command that uses the database and exits must not take the server down with it.
    run = stageroute("backtest", "--quiet", "--horizon", "200", "--seed", "0", "--policies",
                     "greedy", env_dir=db_dir)
    assert run.returncode == 0, run.stderr
    with psycopg.connect(url) as conn:  # libpq's URL form, as psql takes it
        # The oracle, the contextual oracle (the bundled table has tasks) and greedy.
        assert conn.execute("SELECT count(*) FROM run_summaries").fetchone() == (3,)
    sqlalchemy_url = stageroute("db", "url", "--sqlalchemy", env_dir=db_dir).stdout.strip()
    with make_engine(sqlalchemy_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM routing_outcomes")).scalar_one() == 600
    psql = shutil.which("psql")  # the README's client; Debian's postgresql package has it
    assert psql, "psql not found (apt-get install postgresql-client)"
    out = subprocess.run([psql, url, "-tAc", "SELECT count(*) FROM runs"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "3", out.stderr
    info = json.loads(stageroute("db", "info", "--json", env_dir=db_dir).stdout)
    assert info["data_dir"] == str(db_dir) and info["running"] and info["stays_up"]
    assert info["size_bytes"] > 1_000_000
    stopped = stageroute("db", "stop", env_dir=db_dir)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = json.loads(stageroute("db", "info", "--json", env_dir=db_dir).stdout)
    assert not after["running"] and after["url"] is None
    refused = stageroute("db", "reset", env_dir=db_dir)
    assert refused.returncode == 2 and "--yes" in refused.stderr and db_dir.exists()
    assert stageroute("db", "reset", "--yes", env_dir=db_dir).returncode == 0
    assert not db_dir.exists()


def test_db_url_prints_the_configured_database_when_there_is_one(migrated_db: str,
                                                                 tmp_path: Path) -> None:
    result = stageroute("db", "url", "--db-url", migrated_db, env_dir=tmp_path / "unused")
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("postgresql://") and url.endswith(migrated_db.rsplit("/", 1)[1])
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM run_summaries").fetchone() == (0,)
    assert not (tmp_path / "unused").exists()  # the embedded database was not started


def test_default_place_is_per_user_not_per_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STAGEROUTE_EMBEDDED_PG_DIR"}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "db", "info", "--json"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    where = Path(json.loads(result.stdout)["data_dir"])
    assert where.parts[-2:] == ("stageroute", "pg") and tmp_path not in where.parents

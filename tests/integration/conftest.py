"""Integration fixtures: a real PostgreSQL server, and a fresh migrated database per test.

``pg_url`` is the server: ``$STAGEROUTE_TEST_DB_URL`` if set (any database on a server where
the user may create databases), else the repo's development server, started with
``infra/postgres.sh start``. No mocks.

A service the tests started is stopped when the session ends (one that was already running is
left as it was); ``STAGEROUTE_KEEP_SERVICES=1`` keeps them up for the next session, which
then starts faster.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, pool

from streams.audit import migrate
from streams.audit.db import make_engine, normalize_url

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO_ROOT / "infra" / "postgres.sh"


def _start(script: Path, what: str, request: pytest.FixtureRequest) -> str:
    """Start ``script``'s service and return the last line it prints (``what``); stop it at
    the end of the session if it was not running before."""
    running = subprocess.run([str(script), "status"], capture_output=True, timeout=60,
                             check=False).returncode == 0
    if not running and os.environ.get("STAGEROUTE_KEEP_SERVICES") != "1":
        def stop() -> None:
            subprocess.run([str(script), "stop"], capture_output=True, timeout=120, check=False)

        request.session.config.add_cleanup(stop)
    for attempt in range(3):
        # A loopback port can be held for a moment by another process's outgoing connection
        # (ports above 32767 are also ephemeral ones): try again before failing the session.
        proc = subprocess.run([str(script), "start"], capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode == 0 or attempt == 2:
            break
        time.sleep(3)
    name = f"infra/{script.name} start"
    if proc.returncode != 0:
        pytest.fail(f"{name} failed (exit {proc.returncode}):\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"{name} printed no {what}:\n{proc.stderr}")
    return lines[-1]


@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> str:
    """URL of a database on a running PostgreSQL server."""
    return os.environ.get("STAGEROUTE_TEST_DB_URL") or _start(POSTGRES_SH, "URL", request)


@pytest.fixture
def migrated_db(pg_url: str) -> Iterator[str]:
    """A new database (unique name) on the ``pg_url`` server, migrated to head; dropped after
    the test. Yields its URL."""
    server: URL = normalize_url(pg_url)
    name = f"stageroute_test_{uuid.uuid4().hex[:16]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = server.set(database=name).render_as_string(hide_password=False)
        try:
            migrate.upgrade(url)
            yield url
        finally:
            with admin.connect() as conn:
                # FORCE: a test that failed may still hold a pooled connection.
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


KAFKA_SH = REPO_ROOT / "infra" / "kafka.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """Bootstrap address of a running Kafka broker: ``$STAGEROUTE_TEST_KAFKA`` if set, else the
    repo's KRaft broker, started with ``infra/kafka.sh start`` (port from
    ``$STAGEROUTE_KAFKA_PORT``; stopped at the end unless it was running before)."""
    return os.environ.get("STAGEROUTE_TEST_KAFKA") or _start(KAFKA_SH, "address", request)


from tests.integration.livekit import stream_env_factory  # noqa: E402  (a fixture)

__all__ = ["stream_env_factory"]

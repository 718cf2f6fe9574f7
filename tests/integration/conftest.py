"""Integration fixtures: a real PostgreSQL server, and a fresh migrated database per test.

``pg_url`` is the server: ``$STAGEROUTE_TEST_DB_URL`` if set (any database on a server where
the user may create databases), else the repo's development server, started with
``infra/postgres.sh start`` (idempotent; it is left running for the next session, stop it
with ``infra/postgres.sh stop``). No mocks.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, pool

from streams.audit import migrate
from streams.audit.db import make_engine, normalize_url

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO_ROOT / "infra" / "postgres.sh"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a database on a running PostgreSQL server."""
    url = os.environ.get("STAGEROUTE_TEST_DB_URL")
    if url:
        return url
    proc = subprocess.run([str(POSTGRES_SH), "start"], capture_output=True, text=True,
                          timeout=300, check=False)
    if proc.returncode != 0:
        pytest.fail(f"infra/postgres.sh start failed (exit {proc.returncode}):\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"infra/postgres.sh start printed no URL:\n{proc.stderr}")
    return lines[-1]


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
def kafka_bootstrap() -> str:
    """Bootstrap address of a running Kafka broker: ``$STAGEROUTE_TEST_KAFKA`` if set, else the
    repo's KRaft broker, started with ``infra/kafka.sh start`` (idempotent; port from
    ``$STAGEROUTE_KAFKA_PORT``; left running, stop it with ``infra/kafka.sh stop``)."""
    address = os.environ.get("STAGEROUTE_TEST_KAFKA")
    if address:
        return address
    proc = subprocess.run([str(KAFKA_SH), "start"], capture_output=True, text=True,
                          timeout=300, check=False)
    if proc.returncode != 0:
        pytest.fail(f"infra/kafka.sh start failed (exit {proc.returncode}):\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"infra/kafka.sh start printed no address:\n{proc.stderr}")
    return lines[-1]


from tests.integration.livekit import stream_env_factory  # noqa: E402  (a fixture)

__all__ = ["stream_env_factory"]

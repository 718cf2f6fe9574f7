"""Alembic environment for the audit schema.

Two ways in:

* ``streams.audit.migrate`` passes an open connection in ``config.attributes["connection"]``;
  the migration runs in that connection's transaction.
* The ``alembic`` CLI (``-c migrations/alembic.ini``) takes the URL from ``-x url=...`` or
  ``$STAGEROUTE_DB_URL`` and opens its own connection.

Either way the whole upgrade is one transaction (PostgreSQL has transactional DDL) under an
advisory lock, so workers that start together migrate once, one after the other.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, pool, text

from streams.audit.db import make_engine, normalize_url
from streams.audit.models import metadata

# Arbitrary constant shared by every process migrating this schema ("stagerou" in ASCII).
MIGRATION_LOCK_KEY = 0x7374616765726F75

config = context.config
target_metadata = metadata

# Only the CLI has an ini file; a programmatic caller keeps its own logging configuration.
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "STAGEROUTE_DB_URL"
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=postgresql+psycopg://... "
                         "or set STAGEROUTE_DB_URL")
    return url


def _configure(**kwargs: Any) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, **kwargs)


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the DDL instead of running it."""
    _configure(url=normalize_url(_url()), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

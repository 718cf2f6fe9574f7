"""Run the audit schema's Alembic migrations from code.

The Alembic configuration is built here, pointing at the ``migrations`` package's directory,
so it works from a checkout and from an installed wheel alike (no ``alembic.ini`` needed).
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, pool

from streams.audit.db import make_engine


def _migrations_dir() -> Path:
    # Located, not imported: the migrations import the audit models, a layer below them.
    # Search every location: an editable install made before the package had its __init__.py
    # maps it as a namespace package.
    spec = find_spec("migrations")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for entry in locations:
        path = Path(entry)
        if (path / "env.py").is_file():
            return path.resolve()
    raise RuntimeError(f"no env.py in the migrations package ({locations})")


MIGRATIONS_DIR = _migrations_dir()


def alembic_config() -> Config:
    """Alembic configuration for the shipped migrations, without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _run(url: str | URL, action: str, revision: str) -> None:
    config = alembic_config()
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        # One transaction for the whole run; env.py migrates on this connection.
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the newest)."""
    _run(url, "upgrade", revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision``; ``"base"`` drops every table."""
    _run(url, "downgrade", revision)


def current_revision(url: str | URL) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    engine = make_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision shipped with this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations package has no revisions"
    return head

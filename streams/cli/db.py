"""``stageroute db``: the embedded audit database, for psql and SQL tools.

The embedded server otherwise runs only while a command runs; ``db url`` starts it to stay up
until ``db stop``, so that psql, a notebook or any SQL tool can query the audit tables and
views (README: "The audit trail by SQL").
"""

from __future__ import annotations

import json
from typing import Any

from streams.cli.parsing import SubParsers, add_command
from streams.cli.settings import Options, UsageError, database_url, text

DESCRIPTION = """\
The embedded PostgreSQL that holds the audit trail when no --db-url / STAGEROUTE_DB_URL is
given: one per user, in the platform's data directory (on Linux ~/.local/share/stageroute/pg),
or in --embedded-pg-dir / STAGEROUTE_EMBEDDED_PG_DIR. It listens on a Unix socket only.

  stageroute db url       start it (if needed) to stay up; print a URL for psql and SQLAlchemy
  stageroute db info      where it is, how big, whether it runs
  stageroute db stop      stop it
  stageroute db reset     stop it and delete its data directory (every run in it)

Example: psql "$(stageroute db url)" -c 'SELECT * FROM run_summaries LIMIT 5'
"""


def add_parser(sub: SubParsers[Any]) -> None:
    p = add_command(sub, "db", embedded=True, description=DESCRIPTION,
                    help="the embedded audit database: url, info, stop")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    url = add_command(actions, "url", database=True,
                      help="start the embedded database to stay up (until db stop) and print "
                           "its URL; with --db-url or STAGEROUTE_DB_URL set, print that one")
    url.add_argument("--sqlalchemy", action="store_true", help="print the "
                     "postgresql+psycopg:// form SQLAlchemy needs for psycopg 3 (the default "
                     "postgresql:// form is libpq's: psql, psycopg, and SQLAlchemy with "
                     "psycopg2)")
    info = add_command(actions, "info", embedded=True,
                       help="where the embedded database is, how big, whether it runs")
    info.add_argument("--json", action="store_true", help="as JSON")
    add_command(actions, "stop", embedded=True, help="stop the embedded database server")
    reset = add_command(actions, "reset", embedded=True,
                        help="stop the embedded database and delete its data directory")
    reset.add_argument("--yes", action="store_true",
                       help="really delete every run in it (required)")
    p.set_defaults(handler=run_command)


def run_command(opts: Options) -> int:
    from streams.audit import embedded

    data_dir = opts.get("embedded_pg_dir", text, None)
    action = opts.flags["action"]
    if action == "url":
        from streams.audit.db import normalize_url
        from streams.audit.migrate import upgrade

        # The database the other commands use: the configured one, else the embedded one.
        url = (opts.get("db_url", database_url, None)
               or embedded.start_embedded(data_dir, keep_running=True))
        upgrade(url)  # the views and tables exist before anyone queries them
        form = embedded.DRIVER if opts.flags.get("sqlalchemy") else "postgresql"
        print(normalize_url(url).set(drivername=form).render_as_string(hide_password=False))
        return 0
    if action == "reset":
        return _reset(embedded, data_dir, bool(opts.flags.get("yes")))
    if action == "stop":
        stopped = embedded.stop_embedded(data_dir)
        where = embedded.data_dir_path(data_dir)
        print(f"stopped the embedded database in {where}" if stopped
              else f"the embedded database in {where} is not running")
        return 0
    info = embedded.embedded_info(data_dir)
    doc = {"data_dir": str(info.data_dir), "exists": info.exists,
           "size_bytes": info.size_bytes, "running": info.running,
           "stays_up": info.stays_up, "url": info.url}
    if opts.flags.get("json"):
        print(json.dumps(doc, indent=2))
        return 0
    if not info.exists and not info.data_dir.parent.exists() and data_dir is not None:
        raise UsageError(f"--embedded-pg-dir {data_dir}: no such directory")
    print(f"data directory  {info.data_dir}")
    print(f"size            {_size(info.size_bytes) if info.exists else 'not created yet'}")
    state = ("running, kept up until: stageroute db stop" if info.stays_up and info.running
             else "running (while a command uses it)" if info.running else "not running")
    print(f"server          {state}")
    print(f"url             {info.url or '- (stageroute db url starts it)'}")
    return 0


def _reset(embedded: Any, data_dir: str | None, confirmed: bool) -> int:
    import shutil

    info = embedded.embedded_info(data_dir)
    if not info.exists:
        print(f"no embedded database in {info.data_dir}")
        return 0
    if not confirmed:
        raise UsageError(f"this deletes {info.data_dir} ({_size(info.size_bytes)}, every run "
                         "in it); add --yes to do it")
    embedded.stop_embedded(data_dir)
    shutil.rmtree(info.data_dir)
    print(f"deleted {info.data_dir}")
    return 0


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)

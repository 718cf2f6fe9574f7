"""stageroute: decide which LLMs to deploy and route each query to one (StageRoute), as a
backtest over historical data or as a live Kafka worker, with every decision written to a
PostgreSQL audit trail that can be queried, replayed and verified.

First steps:
  stageroute backtest                  the bundled RouterBench data, StageRoute vs baselines
  stageroute audit runs                what was recorded, newest first
  stageroute db url                    a psql/SQLAlchemy URL of the audit database

Options --config FILE and --db-url URL may come before or after the command. Every option
can also be set as STAGEROUTE_<OPTION> in the environment (e.g. STAGEROUTE_M_MAX=8) or as
<option> in the --config file (m_max = 8); a flag wins over the environment over the file.

Exit codes: 0 success; 1 the command ran and found a problem (e.g. audit verify found a
mismatch); 2 invalid input (flags, environment, config, data, files); 3 a service is
unavailable (database or broker); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from streams.cli.parsing import GLOBAL, HelpFormatter, option_names
from streams.cli.settings import (
    Options,
    ServiceUnavailable,
    UsageError,
    check_config_keys,
    load_config_file,
)

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_SERVICE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _version() -> str:
    """The installed version, and which engine runs (``setup.py``: the compiled build)."""
    import stageroute

    engine = "compiled engine" if stageroute.COMPILED else "interpreted engine"
    try:
        return f"{version('stageroute')} ({engine})"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return f"unknown ({engine})"


def build_parser() -> argparse.ArgumentParser:
    from streams.cli import audit, backtest, db, stream

    parser = argparse.ArgumentParser(
        prog="stageroute", description=__doc__, parents=[GLOBAL],
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"stageroute {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    backtest.add_parser(sub)
    audit.add_parser(sub)
    db.add_parser(sub)
    stream.add_parsers(sub)
    return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message of an expected failure; None for a bug."""
    from kafka.errors import KafkaError
    from sqlalchemy.exc import OperationalError

    from streams.audit.embedded import EmbeddedPostgresError
    from streams.tables import DataError

    if isinstance(exc, UsageError | DataError):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, ServiceUnavailable | EmbeddedPostgresError):
        return EXIT_SERVICE, f"error: {_first_line(exc)}"
    if isinstance(exc, OperationalError):
        return EXIT_SERVICE, f"error: database unavailable: {_first_line(exc.orig or exc)}"
    if isinstance(exc, KafkaError):
        return EXIT_SERVICE, f"error: Kafka unavailable: {_first_line(exc)}"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and its exit code."""
    try:
        parser = build_parser()
    except ImportError as exc:
        if type(exc).__name__ != "StaleBuild":  # solvers.compiled: see setup.py
            raise
        print(f"stageroute: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    args = parser.parse_args(argv)
    name = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    flags = vars(args)
    try:
        config_path = flags.get("config") or os.environ.get("STAGEROUTE_CONFIG")
        config = load_config_file(config_path)
        if config_path:
            check_config_keys(config, option_names(parser), config_path)
        return int(args.handler(Options(flags, config)))
    except BrokenPipeError:
        # The reader went away (e.g. `stageroute audit runs | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except BaseException as exc:
        explained = _explain(exc)
        if explained is None:
            raise
        code, message = explained
        print(f"stageroute {name}: {message}", file=sys.stderr)
        return code

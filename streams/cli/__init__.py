"""``stageroute``: backtest, audit and run the StageRoute stream processor.

Exit codes: 0 success; 1 the command ran and found a problem (e.g. ``audit verify`` found a
mismatch); 2 invalid input (flags, environment, config, data or scenario files); 3 a service
failed (database or broker unreachable); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streams.cli.settings import Options, UsageError, load_config_file

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_SERVICE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    from streams.cli import audit, backtest, stream

    parser = argparse.ArgumentParser(
        prog="stageroute", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON or TOML file of option defaults "
                        "(also STAGEROUTE_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    backtest.add_parser(sub)
    audit.add_parser(sub)
    stream.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import os

    from sqlalchemy.exc import OperationalError

    from streams.tables import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config_file(args.config or os.environ.get("STAGEROUTE_CONFIG"))
        return int(args.handler(Options(vars(args), config)))
    except (UsageError, DataError) as exc:
        print(f"stageroute {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperationalError as exc:
        print(f"stageroute {args.command}: database unavailable: {exc.orig}", file=sys.stderr)
        return EXIT_SERVICE
    except KeyboardInterrupt:
        print(f"stageroute {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


"""The command tree's shared pieces: options that work before or after any subcommand.

``--config`` (and ``--db-url`` where a command uses the database) are declared once in parent
parsers and attached to the top-level parser and to every subcommand at every depth, with the
default ``SUPPRESS``: a value given at any depth lands in the namespace, and a level where it
was not given cannot overwrite it with a default. So ``stageroute --config run.toml backtest``
and ``stageroute backtest --config run.toml`` mean the same, as do ``audit --db-url X runs``
and ``audit runs --db-url X``.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from collections.abc import Iterator
from typing import Any

SubParsers = argparse._SubParsersAction  # the type argparse gives add_subparsers() no name for


def _parent(*specs: tuple[str, str, str]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for flag, metavar, help_text in specs:
        parent.add_argument(flag, metavar=metavar, help=help_text)
    return parent


GLOBAL = _parent(("--config", "FILE", "JSON or TOML file of option defaults, keys as the "
                  "long options with _ for - (e.g. m_max = 8); also STAGEROUTE_CONFIG"))
DATABASE = _parent(("--db-url", "URL", "PostgreSQL URL of the audit database, e.g. "
                    "postgresql://user@host/db (default: STAGEROUTE_DB_URL, else the embedded "
                    "per-user database; see: stageroute db info)"))
EMBEDDED = _parent(("--embedded-pg-dir", "DIR", "data directory of the embedded database "
                    "(default: one per user; see: stageroute db info)"))


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions are wrapped to the terminal paragraph by paragraph; indented lines
    (examples, lists) are kept as written. At most 100 columns."""

    def __init__(self, prog: str) -> None:
        columns = shutil.get_terminal_size((100, 24)).columns
        super().__init__(prog, max_help_position=32, width=max(60, min(100, columns - 2)))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        for paragraph in text.strip("\n").split("\n\n"):
            lines: list[str] = []
            prose: list[str] = []
            for line in [*paragraph.splitlines(), " "]:  # a sentinel flushes the prose
                if line.startswith(" "):
                    if prose:
                        lines.append(textwrap.fill(" ".join(prose), width, initial_indent=indent,
                                                   subsequent_indent=indent,
                                                   break_on_hyphens=False))
                        prose = []
                    if line.strip():
                        lines.append(indent + line)
                else:
                    prose.append(line.strip())
            out.append("\n".join(lines))
        return "\n\n".join(out)


def add_command(sub: SubParsers[Any], name: str, *, database: bool = False,
                embedded: bool = False, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that also accepts the global options, and the database's if ``database``
    (``--db-url``, ``--embedded-pg-dir``) or the embedded database's if ``embedded``."""
    parents = ([GLOBAL, DATABASE, EMBEDDED] if database else [GLOBAL, EMBEDDED] if embedded
               else [GLOBAL])
    kwargs.setdefault("formatter_class", HelpFormatter)
    if "help" in kwargs:  # `stageroute X --help` says what X does, as the list of commands does
        kwargs.setdefault("description", kwargs["help"][0].upper() + kwargs["help"][1:] + ".")
    return sub.add_parser(name, parents=parents, **kwargs)  # type: ignore[no-any-return]


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option's destination in the command tree (``m_max`` for ``--m-max``): the
    keys a config file may set."""
    names: set[str] = set()
    for action in _actions(parser):
        if action.option_strings and action.dest not in ("help", "version", "config"):
            names.add(action.dest)
    return names


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _actions(child)

"""Option resolution for the CLI: flag, then environment, then config file, then default.

Every option ``--some-name`` can also come from the environment as ``STAGEROUTE_SOME_NAME`` or
from a JSON or TOML config file (``--config FILE`` or ``STAGEROUTE_CONFIG``) as ``some_name``.
Values are checked by the option's converter, which names the option and where it came from.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class UsageError(ValueError):
    """Bad flags, environment or config: the CLI exits with code 2 and this message."""


class ServiceUnavailable(RuntimeError):
    """A database or broker cannot be reached: the CLI exits with code 3 and this message."""


def load_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"config {path}: cannot read ({exc.strerror})") from None
    try:
        doc = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config {path}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}"
                         f" ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"config {path}: expected a table/object of options")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def check_config_keys(config: Mapping[str, Any], known: set[str], path: str) -> None:
    """An unknown key is a mistake (``mmax = 8`` would otherwise be ignored in silence)."""
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"config {path}: unknown option {key!r}{hint}")


class Options:
    """Resolves options for one command invocation."""

    def __init__(self, flags: Mapping[str, Any], config: Mapping[str, Any],
                 environ: Mapping[str, str] | None = None) -> None:
        self.flags = flags
        self.config = config
        self.environ = os.environ if environ is None else environ

    def get(self, name: str, convert: Callable[[Any, str], T], default: T) -> T:
        flag = self.flags.get(name)
        if flag is not None:
            return convert(flag, f"--{name.replace('_', '-')}")
        env_name = f"STAGEROUTE_{name.upper()}"
        if env_name in self.environ:
            return convert(self.environ[env_name], f"environment {env_name}")
        if name in self.config:
            return convert(self.config[name], f"config option {name}")
        return default


def whole(low: int, high: int | None = None) -> Callable[[Any, str], int]:
    """A converter to a whole number in ``[low, high]``."""

    def convert(value: Any, where: str) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"{where}: expected a whole number, got {value!r}") from None
        if isinstance(value, float) and value != number:
            raise UsageError(f"{where}: expected a whole number, got {value!r}")
        if number < low:
            raise UsageError(f"{where}: expected a whole number >= {low}, got {value!r}")
        if high is not None and number > high:
            raise UsageError(f"{where}: expected a whole number <= {high:,}, got {value!r}")
        return number

    return convert


positive_int = whole(1)
non_negative_int = whole(0)


def positive_float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0.0:
        raise UsageError(f"{where}: expected a number > 0, got {value!r}")
    return number


def share(value: Any, where: str) -> float:
    number = positive_float(value, where)
    if number > 1.0:
        raise UsageError(f"{where}: a throughput share must be in (0, 1], got {value!r}")
    return number


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no",
                                                     "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise UsageError(f"{where}: expected true or false, got {value!r}")


def database_url(value: Any, where: str) -> str:
    """A PostgreSQL URL, checked for form here (reachability is checked when it is opened)."""
    from sqlalchemy.exc import ArgumentError

    from streams.audit.db import normalize_url

    url = text(value, where)
    try:
        normalize_url(url)
    except ArgumentError:
        raise UsageError(f"{where}: not a database URL: {url!r} (expected e.g. "
                         "postgresql://user@host:5432/dbname)") from None
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None
    return url


def output_file(*suffixes: str) -> Callable[[Any, str], Path]:
    """A converter to a file the command will write: its directory must exist and be
    writable, and its name end in one of ``suffixes`` (any name if none), checked before any
    long work starts."""

    def convert(value: Any, where: str) -> Path:
        path = Path(text(value, where)).expanduser()
        if suffixes and not path.name.lower().endswith(suffixes):
            raise UsageError(f"{where} {value}: expected a {' or '.join(suffixes)} file")
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"{where} {value}: directory {str(folder)!r} does not exist")
        if path.is_dir():
            raise UsageError(f"{where} {value}: is a directory")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"{where} {value}: directory {str(folder)!r} is not writable")
        return path

    return convert


def audit_store(opts: Options) -> Any:
    """The audit store the options name (``--db-url``, ``STAGEROUTE_DB_URL``, else the embedded
    database in ``--embedded-pg-dir`` or its per-user default), migrated to the newest schema."""
    from streams.audit.recorder import open_store

    return open_store(opts.get("db_url", database_url, None),
                      opts.get("embedded_pg_dir", text, None))

"""Option resolution for the CLI: flag, then environment, then config file, then default.

Every option ``--some-name`` can also come from the environment as ``STAGEROUTE_SOME_NAME`` or
from a JSON or TOML config file (``--config FILE`` or ``STAGEROUTE_CONFIG``) as ``some_name``.
Values are checked by the option's converter, which names the option and where it came from.
"""

from __future__ import annotations

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


def positive_int(value: Any, where: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: expected a whole number, got {value!r}") from None
    if number < 1 or (isinstance(value, float) and value != number):
        raise UsageError(f"{where}: expected a whole number >= 1, got {value!r}")
    return number


def any_int(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: expected a whole number, got {value!r}") from None


def non_negative_int(value: Any, where: str) -> int:
    number = any_int(value, where)
    if number < 0:
        raise UsageError(f"{where}: expected a whole number >= 0, got {value!r}")
    return number


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

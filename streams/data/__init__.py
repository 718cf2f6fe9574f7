"""Data shipped with the package: the RouterBench subset and its default model schedule.

Provenance and column meanings are in ``README.md`` beside this file. Paths are resolved with
``importlib.resources``, so they work from a source checkout and from an installed wheel.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path
from typing import Final

__all__ = ["BUNDLED_TABLE", "DEFAULT_SCHEDULE"]

_resources = ExitStack()
atexit.register(_resources.close)


def _resource_path(name: str) -> Path:
    ref = files(__name__) / name
    if isinstance(ref, Path):  # the usual case: the package is a directory on disk
        return ref
    # Zipped install: materialise the file once, removed at interpreter exit.
    return _resources.enter_context(as_file(ref))


BUNDLED_TABLE: Final[Path] = _resource_path("routerbench_subset.csv.gz")
"""2,225 RouterBench prompts x 11 models, ``<model>|score`` and ``<model>|cost`` columns."""

DEFAULT_SCHEDULE: Final[Path] = _resource_path("default_schedule.json")
"""Default arrival/expiry schedule of the bundled models, in fractions of the horizon."""

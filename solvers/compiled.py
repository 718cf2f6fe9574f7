"""The compiled build (``setup.py``): whether a package runs it, and a guard against a stale one.

A compiled build writes ``_compiled.json`` into each package it compiled: the sha256 of every
source it built an extension from.  An editable build leaves the extensions beside their
sources, and Python imports an extension before a source of the same name, so an edit made
since the build would be silently ignored.  ``check`` runs when the package is imported and
refuses that case with what to do; it reads the package's own files once, at import.
"""

from __future__ import annotations

import hashlib
import json
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path


class StaleBuild(ImportError):
    """A compiled module's source changed after the build."""


def check(package_file: str) -> bool:
    """Whether the package of ``package_file`` (its ``__init__``) imports compiled modules;
    raises ``StaleBuild`` when one was built from a source that has changed since."""
    directory = Path(package_file).parent
    manifest = directory / "_compiled.json"
    if not manifest.is_file():
        return False
    compiled, stale = False, []
    for name, digest in json.loads(manifest.read_text()).items():
        source = directory / name
        stem = source.with_suffix("")
        if not any(stem.with_name(stem.name + s).exists() for s in EXTENSION_SUFFIXES):
            continue  # the extension was removed: Python imports the source
        compiled = True
        if source.is_file() and hashlib.sha256(source.read_bytes()).hexdigest() != digest:
            stale.append(str(source.relative_to(directory.parent)))
    if stale:
        raise StaleBuild(
            f"compiled modules older than their source: {', '.join(stale)}; rebuild them with "
            f"STAGEROUTE_COMPILE=1 pip install -e . or go back to the interpreted engine with "
            f"git clean -fX solvers stageroute")
    return compiled

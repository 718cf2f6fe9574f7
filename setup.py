"""The optional compiled build of the engine's hot path (everything else is in pyproject.toml).

``STAGEROUTE_COMPILE=1 pip install .`` (or ``-e .``) compiles ``COMPILED`` to C extensions
with mypyc, as mypy and black ship themselves: the same type-checked source (``mypy --strict``
holds for it), the same decisions bit for bit (CI runs the unit suite, golden digests
included, on this build), 1.5-2.4x the interpreted speed per event.  Without the variable
the install is pure Python, the default for development: an edit takes effect at once.

Each package gets ``_compiled.json``, the digest of every source it compiled; an editable
build puts the extensions beside their sources, and ``solvers.compiled.check`` refuses to
import a package whose compiled source has changed since (rebuild, or remove the build).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The per-event path: the engine, the statistics, the draws, RouteOPT and the bounds.  The
#: policies' classes (subclassed by interpreted ones), the contextual solvers (numpy does their
#: work) and the pydantic schemas stay interpreted.
COMPILED = [
    "solvers/bounds.py",
    "solvers/route_opt.py",
    "stageroute/engine/atomic.py",
    "stageroute/engine/budget.py",
    "stageroute/engine/context.py",
    "stageroute/engine/core.py",
    "stageroute/engine/state.py",
    "stageroute/policies/base.py",
    "stageroute/policies/context_stats.py",
    "stageroute/policies/draws.py",
]
ROOT = Path(__file__).resolve().parent


class BuildWithDigests(build_ext):
    """Builds the extensions, then writes each package's ``_compiled.json``."""

    def run(self) -> None:
        super().run()
        base = ROOT if self.inplace else Path(self.build_lib)
        for package in sorted({m.split("/")[0] for m in COMPILED}):
            built = {m.split("/", 1)[1]: hashlib.sha256((ROOT / m).read_bytes()).hexdigest()
                     for m in COMPILED if m.startswith(package + "/")}
            (base / package).mkdir(parents=True, exist_ok=True)
            (base / package / "_compiled.json").write_text(json.dumps(built, indent=2) + "\n")


if os.environ.get("STAGEROUTE_COMPILE") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3"),
          cmdclass={"build_ext": BuildWithDigests})
else:
    setup()

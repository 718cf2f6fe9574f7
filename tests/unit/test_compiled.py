"""The compiled build's guard (``solvers.compiled``, ``setup.py``): an extension built from a
source that has changed since is refused at import with what to do, never silently run."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import stageroute
from solvers.compiled import StaleBuild, check

ROOT = Path(__file__).resolve().parents[2]


def fake_build(package: Path, module: str, built_from: bytes) -> None:
    """``package`` as a compiled build leaves it: ``module`` (a path in the package) has an
    extension beside its source, built from ``built_from``."""
    stem = (package / module).with_suffix("")
    stem.with_name(stem.name + EXTENSION_SUFFIXES[0]).write_bytes(b"not a real extension")
    manifest = {module: hashlib.sha256(built_from).hexdigest()}
    (package / "_compiled.json").write_text(json.dumps(manifest))


def package_with(tmp_path: Path, source: bytes) -> Path:
    package = tmp_path / "pkg"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine" / "core.py").write_bytes(source)
    return package


def test_an_interpreted_package_is_not_compiled(tmp_path: Path) -> None:
    assert check(str(package_with(tmp_path, b"x = 1\n") / "__init__.py")) is False


def test_a_build_of_the_current_source_is_compiled(tmp_path: Path) -> None:
    package = package_with(tmp_path, b"x = 1\n")
    fake_build(package, "engine/core.py", b"x = 1\n")
    assert check(str(package / "__init__.py")) is True


def test_a_build_of_an_older_source_is_refused(tmp_path: Path) -> None:
    package = package_with(tmp_path, b"x = 2\n")
    fake_build(package, "engine/core.py", b"x = 1\n")
    with pytest.raises(StaleBuild, match=r"pkg/engine/core\.py.*STAGEROUTE_COMPILE=1"):
        check(str(package / "__init__.py"))


def test_a_removed_extension_leaves_the_source_in_charge(tmp_path: Path) -> None:
    package = package_with(tmp_path, b"x = 2\n")
    fake_build(package, "engine/core.py", b"x = 1\n")
    for extension in (package / "engine").glob("core.*"):
        if extension.suffix != ".py":
            extension.unlink()
    assert check(str(package / "__init__.py")) is False


def test_the_cli_names_a_stale_build_in_one_line(tmp_path: Path) -> None:
    for name in ("schemas", "solvers", "stageroute", "streams"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "_compiled.json"))
    budget = tmp_path / "stageroute" / "engine" / "budget.py"
    fake_build(tmp_path / "stageroute", "engine/budget.py", budget.read_bytes() + b"# older\n")
    result = subprocess.run([sys.executable, "-m", "streams.cli", "backtest", "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and "stageroute/engine/budget.py" in lines[0], lines
    assert "STAGEROUTE_COMPILE=1 pip install -e ." in lines[0]


def test_the_version_says_which_engine_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "streams.cli", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    engine = "compiled" if stageroute.COMPILED else "interpreted"
    assert result.returncode == 0 and f"({engine} engine)" in result.stdout, result

"""Export the JSON Schema of every event and decision type into ``schemas/json/``.

One file per type, ``<type>.v<schema_version>.json`` (e.g. ``model_arrived.v1.json``), keys
sorted, 2-space indent, trailing newline, so that the files diff cleanly. The directory holds
generated files only: stale ``*.json`` files are deleted on write and reported by the check.

    python -m streams.schema_files            # (re)write the files
    python -m streams.schema_files --check    # exit 1 listing files that differ (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import schemas
from schemas.base import ContractModel
from schemas.decisions import DECISION_TYPES
from schemas.events import EVENT_TYPES

SCHEMA_DIR: Final = Path(schemas.__file__).resolve().parent / "json"
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def _file_name(model: type[ContractModel]) -> str:
    kind = model.model_fields["type"].default
    version = model.model_fields["schema_version"].default
    return f"{kind}.v{version}.json"


def render() -> dict[str, str]:
    """File name -> file content, for every event and decision type."""
    files: dict[str, str] = {}
    for model in (*EVENT_TYPES.values(), *DECISION_TYPES.values()):
        schema = {"$schema": _DIALECT, **model.model_json_schema()}
        files[_file_name(model)] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the files in ``directory`` that are missing, differ, or are stale; sorted."""
    expected = render()
    present = {path.name for path in directory.glob("*.json")}
    drifted = set(present - expected.keys())
    for name, content in expected.items():
        path = directory / name
        if name not in present or path.read_text(encoding="utf-8") != content:
            drifted.add(name)
    return sorted(drifted)


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """Bring ``directory`` in line with the models; returns the names written or deleted."""
    changed = check(directory)
    expected = render()
    directory.mkdir(parents=True, exist_ok=True)
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_text(expected[name], encoding="utf-8", newline="\n")
        else:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.schema_files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files differ from the models"
    )
    args = parser.parse_args(argv)
    if args.check:
        drifted = check()
        for name in drifted:
            print(f"out of date: {SCHEMA_DIR / name}", file=sys.stderr)
        if drifted:
            print("run: python -m streams.schema_files", file=sys.stderr)
        return 1 if drifted else 0
    for name in write():
        print(f"updated: {SCHEMA_DIR / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

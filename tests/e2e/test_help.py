"""Help texts: complete, plain text, and their examples work as written."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

from schemas import decode_event
from streams import publisher
from streams.cli import build_parser


def walk(parser: argparse.ArgumentParser, path: str = "stageroute"
         ) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += walk(child, f"{path} {name}")
    return found


def test_every_argument_has_help_and_no_markup() -> None:
    for path, parser in walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{path}: {action.option_strings or action.dest} has no help"
        text = parser.format_help()
        assert "``" not in text and ":func:" not in text, path
        assert path == "stageroute" or parser.description, f"{path} has no description"


def test_top_level_help_names_both_worker_runtimes() -> None:
    text = build_parser().format_help()
    assert "faust or aiokafka" in text


def test_publish_csv_example_from_the_help_is_accepted() -> None:
    help_text = subprocess.run([sys.executable, "-m", "streams.cli", "publish", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    example = help_text.split("For example:", 1)[1].splitlines()[1:]
    lines = []
    for line in example:  # the indented block that follows
        if not line.startswith("  "):
            break
        lines.append(line.strip())
    assert lines[0].startswith("type,time,domain")
    rows = list(publisher.read_csv(io.BytesIO("\n".join(lines).encode() + b"\n")))
    assert len(rows) == len(lines) - 1
    types = [decode_event(event).type for _, event in rows]  # raises on a rejected line
    assert set(types) == {"model_arrived", "model_expired", "stage_boundary", "query",
                          "feedback"}

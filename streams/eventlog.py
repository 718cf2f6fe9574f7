"""JSONL event logs, one event per line, optionally gzip-compressed."""

from __future__ import annotations

import contextlib
import gzip
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from schemas import Event, EventRejected, decode_event, encode
from streams.tables import DataError, StrPath

__all__ = ["load_event_log", "write_event_log"]

_GZIP_MAGIC: Final = b"\x1f\x8b"


def load_event_log(path: StrPath) -> Iterator[tuple[int, Event | EventRejected]]:
    """Decode a JSONL event log lazily: ``(line number, event or its EventRejected)``.

    Line numbers are 1-based physical lines; blank lines are skipped. Gzip is detected from
    the file's content, whatever its name. A missing or unreadable file raises ``DataError``
    at once (not on the first ``next``); a bad line never stops the iteration.
    """
    name = os.fspath(path)
    if not Path(name).is_file():
        raise DataError(name, "no such file" if not Path(name).exists() else "not a regular file")

    def decode() -> Iterator[tuple[int, Event | EventRejected]]:
        try:
            stream = _open_binary(name)
        except OSError as exc:
            raise DataError(name, f"unreadable: {exc}") from None
        number = 0
        with stream:
            try:
                for number, line in enumerate(stream, start=1):
                    if not line.strip():
                        continue
                    try:
                        event = decode_event(line.rstrip(b"\r\n"))
                    except EventRejected as rejected:
                        yield number, rejected
                    else:
                        yield number, event
            except (OSError, EOFError) as exc:  # a corrupt or truncated gzip stream
                raise DataError(name, f"unreadable: {exc}", line=number + 1) from None

    return decode()


def _open_binary(name: str) -> gzip.GzipFile | BinaryIO:
    with open(name, "rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    return gzip.open(name, "rb") if gzipped else open(name, "rb")


def write_event_log(path: StrPath, events: Iterable[Event]) -> int:
    """Write ``events`` as JSONL via ``schemas.encode``; gzip if the name ends in ``.gz``.

    The file is replaced atomically (written beside it, then renamed), so a reader never sees
    half a log. Returns the number of events written.
    """
    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    count = 0
    try:
        with open(partial, "xb") as raw, _maybe_gzip(raw, target.name.endswith(".gz")) as out:
            for event in events:
                out.write(encode(event) + b"\n")  # compact JSON has no raw newline
                count += 1
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return count


def _maybe_gzip(
    raw: BinaryIO, gzipped: bool
) -> contextlib.AbstractContextManager[gzip.GzipFile | BinaryIO]:
    if not gzipped:
        return contextlib.nullcontext(raw)
    # mtime=0 and no file name in the header: the same events give the same bytes.
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)

"""Publish input events to Kafka (kafka-python): validated, keyed by domain, acks=all.

Every event is validated with ``schemas.decode_event`` before it is sent and re-encoded in the
canonical wire form; a bad line is reported with its line number and not sent, the good ones
are. The producer is idempotent (``enable_idempotence=True``, supported by the installed
kafka-python 3.x): a retried send does not duplicate a record, and records of one partition
keep their order, which is what ``stageroute.events`` promises the worker.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from schemas import Event, EventRejected, decode_event, encode
from streams import topics

#: CSV columns kept as text; every other non-empty cell is read as JSON (numbers, booleans,
#: objects such as ``features`` or ``metadata``).
_CSV_TEXT_COLUMNS: Final = frozenset({"type", "domain", "model_id", "query_id"})


def make_producer(bootstrap: str, **overrides: Any) -> Any:
    """A kafka-python producer: acks=all, idempotent, batching a few ms."""
    from kafka import KafkaProducer

    options: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        batch_size=256 * 1024, max_in_flight_requests_per_connection=5,
        request_timeout_ms=30_000)
    options.update(overrides)
    return KafkaProducer(**options)


@dataclass
class PublishReport:
    sent: int = 0
    bad: list[tuple[int, EventRejected]] = field(default_factory=list)


def read_jsonl(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) of every non-blank line."""
    for number, line in enumerate(handle, start=1):
        if line.strip():
            yield number, line.rstrip(b"\r\n")


def read_csv(handle: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | bytes]]:
    """(line number, event dict) per CSV row; empty cells are absent fields."""
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    for row in reader:
        number = reader.line_num
        event: dict[str, Any] = {}
        for name, cell in row.items():
            if name is None or cell is None or cell == "":
                continue
            if name in _CSV_TEXT_COLUMNS:
                event[name] = cell
                continue
            try:
                event[name] = json.loads(cell)
            except ValueError:
                event[name] = cell
        yield number, event


def open_input(source: str) -> IO[bytes]:
    if source == "-":
        return sys.stdin.buffer
    return Path(source).open("rb")


def publish(producer: Any, items: Iterable[tuple[int, Any]], mode: str = "single",
            on_send: Callable[[Event], None] | None = None,
            pace: Callable[[Event], None] | None = None,
            names: topics.TopicNames = topics.DEFAULT) -> PublishReport:
    """Validate and send every item; ``pace(event)`` may sleep before a send. Flushes (waits
    for every ack) before returning; a failed send raises ``KafkaError``."""
    report = PublishReport()
    futures = []
    for number, payload in items:
        try:
            event = decode_event(payload)
        except EventRejected as rejected:
            report.bad.append((number, rejected))
            continue
        if pace is not None:
            pace(event)
        if on_send is not None:
            on_send(event)
        futures.append(producer.send(names.topic_for(event.type, mode),
                                     key=event.domain.encode(), value=encode(event)))
        report.sent += 1
        if len(futures) >= 10_000:
            _settle(producer, futures)
    _settle(producer, futures)
    return report


def _settle(producer: Any, futures: list[Any]) -> None:
    producer.flush()
    for future in futures:
        future.get(timeout=30)  # raises the send's error, if any
    futures.clear()


class EventTimePacer:
    """Sleeps so that events go out at ``speed`` x their event-time spacing."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self.origin: tuple[float, float] | None = None

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if self.origin is None:
            self.origin = (event.time, now)
            return
        due = self.origin[1] + (event.time - self.origin[0]) / self.speed
        if due > now:
            time.sleep(due - now)


def journal_events(store: Any, run_id: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """A run's journal as (seq, event dict): a historical log to replay."""
    yield from store.journal(run_id)


def export_journal(store: Any, run_id: str, target: str | Path) -> int:
    """Write a run's journal as a JSONL event log (gzip if the name ends in .gz); returns the
    number of events. ``stageroute replay --to-kafka FILE`` reads it back."""
    from streams.eventlog import write_event_log

    return write_event_log(target, (decode_event(event) for _, event in store.journal(run_id)))

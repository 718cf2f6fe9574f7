"""The live worker's processing step, free of faust: decode -> engine -> one DB commit -> emit.

``Processor.process(messages)`` takes one batch of consumed input records and returns the
output records to publish. Per routing domain (one engine state, one live run each):

1. decode every record at the boundary; undecodable bytes become a dead letter (no ``seq``:
   the engine never saw them), never an exception;
2. skip records whose (topic, partition, offset) is at or below the highest offset already
   committed for that domain's run (``consumer_tracking``): a redelivery after a crash;
3. apply the rest to the engine, in consumption order;
4. write journal entries, decisions, dead letters, model-registry rows and the tracking rows
   in ONE ``AuditStore.write_batch`` transaction;
5. only then hand the decisions and dead letters back for publishing.

So the database is the source of truth and Kafka output is derived from it: a crash before
the commit loses nothing (the records are redelivered, nothing of them is stored), a crash
after it redelivers records that step 2 skips. What a crash after the commit can lose is the
*output messages*; on restart ``Processor._load`` re-sends exactly the stored decisions the
output topic lacks.

Why engine state lives in Postgres (snapshots + journal), not in faust tables: the journal
entries, decisions and tracking rows of a batch commit in the same transaction, so "state as
of the last commit" is exactly "latest snapshot + journal entries after it", with no second
store (a RocksDB table and its changelog topic) that would have to be kept consistent with
the database across crashes. Snapshots only bound the replay on start; one is serialised at
the end of a batch and stored only after that batch's commit, so any stored snapshot is a
state the journal reaches.

Batches holding several domains commit one transaction per domain; tracking is per domain
run, so a crash between two of them leaves each domain either fully committed or not at all.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import ValidationError
from sqlalchemy import func, select

from schemas import (
    DeadLetter,
    DeadLetterReason,
    DeploymentDecision,
    EventRejected,
    RoutingDecision,
    dead_letter,
    decode_event,
    encode,
)
from schemas.base import DEFAULT_DOMAIN
from stageroute.engine import EngineConfig, EngineState, apply, initial_state, restore, snapshot
from streams.audit.models import ConsumerTracking, DeploymentDecisionRow, RoutingDecisionRow
from streams.audit.recorder import decision_row, registry_row
from streams.audit.store import AuditStore

RUN_NAMESPACE: Final = uuid.UUID("5e7c2a4e-6d1b-4f5e-9b1a-2f0c3d4e5a60")
"""uuid5 namespace of live run ids: run (name, domain) -> runs.run_id."""


def live_run_id(run_name: str, domain: str) -> str:
    """The ``runs.run_id`` of the live run ``run_name`` for ``domain`` (deterministic)."""
    return str(uuid.uuid5(RUN_NAMESPACE, f"live\x1f{run_name}\x1f{domain}"))


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed input record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One output record to publish after the commit: a decision (routing or deployment), or
    a dead letter (``dead``), keyed by domain."""

    dead: bool
    key: bytes
    value: bytes


class ConfigMismatch(ValueError):
    """The run exists with another engine configuration."""


@dataclass(slots=True)
class DomainRun:
    domain: str
    run_id: str
    state: EngineState
    tracked: dict[tuple[str, int], int]
    """Highest committed offset per (topic, partition)."""
    since_snapshot: int = 0


@dataclass(slots=True)
class _Pending:
    """What one batch produced for one domain, until its commit."""

    journal: list[dict[str, Any]] = field(default_factory=list)
    routing: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    tracking: dict[tuple[str, int], int] = field(default_factory=dict)
    out: list[Outgoing] = field(default_factory=list)
    snapshot: tuple[int, bytes] | None = None


@dataclass(slots=True)
class Prepared:
    """A batch applied to the engine, not yet committed."""

    started: float
    resend: list[Outgoing] = field(default_factory=list)
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class Metrics:
    """Counters for ``/metrics``; updated by the processing thread, read by the web server."""

    started: float = field(default_factory=time.time)
    events: int = 0
    decisions: int = 0
    deployments: int = 0
    dead_letters: int = 0
    skipped_redelivered: int = 0
    resent: int = 0
    batches: int = 0
    snapshots: int = 0
    last_batch_seconds: float = 0.0
    last_commit: float | None = None
    #: (wall time, decisions so far) samples, for a recent decisions/s figure.
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    """Next offset to consume per (topic, partition), for lag."""

    def rate(self, window: float = 10.0) -> float:
        now = time.time()
        recent = [(t, n) for t, n in self.samples if now - t <= window]
        if len(recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class Processor:
    """Engine states per domain, persisted through ``store``; one thread at a time."""

    def __init__(self, store: AuditStore, run_name: str, config: EngineConfig,
                 snapshot_every: int = 10_000,
                 last_sent: Callable[[], dict[str, int]] | None = None) -> None:
        self.store = store
        self.run_name = run_name
        self.config = config
        self.snapshot_every = snapshot_every
        self.runs: dict[str, DomainRun] = {}
        self.metrics = Metrics()
        self._last_sent_source = last_sent
        self._last_sent: dict[str, int] | None = None
        # process() runs in a worker thread; a shutdown snapshot must not see half a batch.
        self.lock = threading.Lock()

    # --- loading -------------------------------------------------------------------------

    def domain_config(self, domain: str) -> EngineConfig:
        return self.config.model_copy(update={"domain": domain})

    def _load(self, domain: str, out: list[Outgoing]) -> DomainRun:
        """The domain's run: created, or restored (snapshot + journal after it) with its
        tracking maxima; decisions the output topic lacks are queued on ``out`` for resending.

        A crash between the commit and the producer's acks loses output messages. Decisions
        of a domain are sent in ``seq`` order to one partition by an idempotent producer, so
        the output topic holds a prefix of them: the highest ``seq`` found there
        (``last_sent``) says exactly which stored decisions to send again.
        """
        run_id = live_run_id(self.run_name, domain)
        config = self.domain_config(domain)
        wanted = config.model_dump(mode="json")
        run = self.store.get_run(run_id)
        if run is None:
            self.store.create_run("live", wanted, config.seed, domain, config.policy,
                                  run_id=run_id, name=self.run_name)
            loaded = DomainRun(domain, run_id, initial_state(config), {})
        else:
            if run["config"] != wanted:
                raise ConfigMismatch(
                    f"live run {self.run_name!r} (domain {domain!r}, {run_id}) was started with "
                    f"another engine config; use a new --run-id")
            loaded = DomainRun(domain, run_id, load_state(self.store, run_id, config),
                               tracking_maxima(self.store, run_id))
            out.extend(self._resend(loaded))
        self.runs[domain] = loaded
        return loaded

    def _resend(self, run: DomainRun) -> list[Outgoing]:
        if self._last_sent is None:
            self._last_sent = self._last_sent_source() if self._last_sent_source else {}
        after = self._last_sent.get(run.domain, -1)
        resent = [Outgoing(False, run.domain.encode(), encode(d))
                  for d in stored_decisions(self.store, run.run_id, run.domain, after)]
        self.metrics.resent += len(resent)
        return resent

    # --- processing ----------------------------------------------------------------------

    def process(self, messages: Sequence[Message]) -> list[Outgoing]:
        """One batch: see the module docstring. Returns what to publish, in order."""
        with self.lock:
            return self.commit(self.prepare(messages))

    def prepare(self, messages: Sequence[Message]) -> Prepared:
        """Steps 1-3: decode, skip redeliveries, apply. The engine states run ahead of the
        database until ``commit`` of the result; ``prepare`` of the next batch may overlap
        that commit (a pipelined runtime), never precede it in ``commit`` order."""
        prepared = Prepared(started=time.perf_counter())
        out, pending = prepared.resend, prepared.pending
        metrics = self.metrics
        for msg in messages:
            metrics.positions[(msg.topic, msg.partition)] = msg.offset + 1
            try:
                event = decode_event(msg.value if msg.value is not None else b"")
            except EventRejected as rejected:
                domain = _key_domain(msg.key)
                run = self.runs.get(domain) or self._load(domain, out)
                if msg.offset <= run.tracked.get((msg.topic, msg.partition), -1):
                    metrics.skipped_redelivered += 1
                    continue
                batch = pending.setdefault(domain, _Pending())
                letter = dead_letter(rejected, domain)
                batch.dead_letters.append(decision_row(letter))
                batch.out.append(Outgoing(True, domain.encode(), encode(letter)))
                batch.tracking[(msg.topic, msg.partition)] = msg.offset
                continue
            domain = event.domain
            run = self.runs.get(domain) or self._load(domain, out)
            if msg.offset <= run.tracked.get((msg.topic, msg.partition), -1):
                metrics.skipped_redelivered += 1
                continue
            batch = pending.setdefault(domain, _Pending())
            seq = run.state.seq
            _, outputs = apply(run.state, event)
            _record(batch, seq, event, outputs, domain)
            batch.tracking[(msg.topic, msg.partition)] = msg.offset
        for domain, batch in pending.items():
            run = self.runs[domain]
            run.tracked.update(batch.tracking)
            run.since_snapshot += len(batch.journal)
            if run.since_snapshot >= self.snapshot_every:
                # Serialised now, saved after the commit: the state as of this batch's end.
                batch.snapshot = (run.state.seq, snapshot(run.state))
                run.since_snapshot = 0
        return prepared

    def commit(self, prepared: Prepared) -> list[Outgoing]:
        """Steps 4-5: one transaction per domain, then the records to publish."""
        metrics = self.metrics
        out = list(prepared.resend)
        applied_at = datetime.now(UTC)
        for domain, batch in prepared.pending.items():
            run_id = live_run_id(self.run_name, domain)
            for entry in batch.journal:
                entry["applied_at"] = applied_at
            try:
                self.store.write_batch(
                    run_id, journal=batch.journal, routing=batch.routing,
                    deployments=batch.deployments, dead_letters=batch.dead_letters,
                    models=batch.models,
                    # The highest offset per partition is enough: records of a domain commit
                    # in offset order, so "<= max" is exactly "already committed".
                    tracking=[(t, p, o) for (t, p), o in batch.tracking.items()])
                if batch.snapshot is not None and self.store.save_snapshot(run_id,
                                                                           *batch.snapshot):
                    metrics.snapshots += 1
            except BaseException:
                # Engine states ran ahead of the database and earlier domains' outputs are
                # unsent: forget every domain, so each is reloaded from the database (and its
                # unsent decisions found again) on its next record.
                self.runs.clear()
                self._last_sent = None
                raise
            metrics.events += len(batch.journal)
            metrics.decisions += len(batch.routing)
            metrics.deployments += len(batch.deployments)
            metrics.dead_letters += len(batch.dead_letters)
            out.extend(batch.out)
        metrics.batches += 1
        metrics.last_batch_seconds = time.perf_counter() - prepared.started
        metrics.last_commit = time.time()
        metrics.samples.append((metrics.last_commit, metrics.decisions))
        return out

    def snapshot_all(self) -> None:
        """Snapshot every domain's state (at shutdown; call only when every prepared batch
        is committed)."""
        with self.lock:
            for run in self.runs.values():
                if run.since_snapshot:
                    if self.store.save_snapshot(run.run_id, run.state.seq,
                                                snapshot(run.state)):
                        self.metrics.snapshots += 1
                    run.since_snapshot = 0


def _key_domain(key: bytes | None) -> str:
    if not key:
        return DEFAULT_DOMAIN
    try:
        text = key.decode()
        DeadLetter(domain=text, reason=DeadLetterReason.MALFORMED, detail="", payload="")
    except (UnicodeDecodeError, ValidationError):
        return DEFAULT_DOMAIN
    return text


def _record(batch: _Pending, seq: int, event: Any, outputs: Iterable[Any], domain: str) -> None:
    batch.journal.append({"seq": seq, "event_type": event.type, "event": encode(event)})
    accepted = True
    key = domain.encode()
    for output in outputs:
        if isinstance(output, RoutingDecision):
            batch.routing.append(decision_row(output))
            batch.out.append(Outgoing(False, key, encode(output)))
        elif isinstance(output, DeploymentDecision):
            batch.deployments.append(decision_row(output))
            batch.out.append(Outgoing(False, key, encode(output)))
        elif isinstance(output, DeadLetter):
            accepted = False
            batch.dead_letters.append(decision_row(output))
            batch.out.append(Outgoing(True, key, encode(output)))
    registry = registry_row(event, seq) if accepted else None
    if registry is not None:
        batch.models.append(registry)


# --- reads used on start ----------------------------------------------------------------------


def load_state(store: AuditStore, run_id: str, config: EngineConfig) -> EngineState:
    """The run's engine state as the database has it: latest snapshot + journal after it."""
    latest = store.latest_snapshot(run_id)
    state = initial_state(config) if latest is None else restore(latest[1])
    for seq, event in store.journal(run_id, from_seq=state.seq):
        if seq != state.seq:
            raise RuntimeError(f"run {run_id}: journal gap, expected seq {state.seq}, got {seq}")
        apply(state, decode_event(event))
    return state


def tracking_maxima(store: AuditStore, run_id: str) -> dict[tuple[str, int], int]:
    t = ConsumerTracking.__table__
    stmt = (select(t.c.topic, t.c.partition, func.max(t.c.offset))
            .where(t.c.run_id == run_id).group_by(t.c.topic, t.c.partition))
    with store.engine.connect() as conn:
        return {(topic, partition): offset for topic, partition, offset in conn.execute(stmt)}


def stored_decisions(store: AuditStore, run_id: str, domain: str,
                     after_seq: int) -> list[RoutingDecision | DeploymentDecision]:
    """The run's routing and deployment decisions with ``seq > after_seq``, in seq order."""
    found: list[tuple[int, int, RoutingDecision | DeploymentDecision]] = []
    for table, cls, rank in ((DeploymentDecisionRow.__table__, DeploymentDecision, 0),
                             (RoutingDecisionRow.__table__, RoutingDecision, 1)):
        columns = [c for c in table.c if c.name not in ("id", "run_id")]
        stmt = select(*columns).where(table.c.run_id == run_id, table.c.seq > after_seq)
        with store.engine.connect() as conn:
            for row in conn.execute(stmt).mappings():
                decision = cls.model_validate({**row, "domain": domain})
                found.append((row["seq"], rank, decision))
    found.sort(key=lambda item: (item[0], item[1]))
    return [d for _, _, d in found]

"""The live worker's processing step, free of Kafka and faust: records in, engine states per
routing domain, rows and output records out. ``streams.live.checkpoint`` runs it.

Per batch:

1. ``prepare``: every record of a partition this worker does not own (never claimed, or lost
   to another worker) is left alone; a record at or below its partition's committed offset is
   a redelivery and skipped. The rest are decoded at the boundary; undecodable bytes, and an
   event whose message key is not its ``domain`` (or that comes from another partition than
   its domain's), become dead letters of the worker run. The domains the batch needs are
   loaded from the database (snapshot + journal after it) BEFORE anything is applied, so a
   failed load leaves nothing half done and ``prepare`` may simply be called again. Then the
   events are applied, in consumption order; the result is the rows to store and the output
   records to publish.
2. ``persist``: the rows of the whole batch in one transaction under the fence of the epochs
   it was applied under (``streams.audit.live.commit``); it touches only the database, so the
   checkpoint runs it on a thread of its own, behind the next batches' ``prepare``. When it
   raises ``Fenced``, ``fence`` drops those partitions with their domains and their part of
   the batch, and the rest is persisted. (``commit`` does both in a row, and counts.)

Ownership: ``assign`` claims partitions (a new epoch each) and returns the outputs committed
from records that Kafka's committed offsets do not cover, which a crash may have left unsent;
``revoke`` forgets partitions and drops the states of their domains. A domain's state is only
ever loaded after its partition was claimed, so it is the state the database holds.

Runs: each domain is a live run of its own (``live_run_id(run_name, domain)``); the worker
run ``worker_run_id(run_name)`` holds the partition positions and fences and the dead letters
of records that belong to no domain.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from schemas import (
    DeadLetter,
    DeadLetterReason,
    DeploymentDecision,
    Event,
    RoutingDecision,
    decode_event,
    encode,
)
from schemas.base import DEFAULT_DOMAIN
from stageroute.engine import EngineConfig, EngineState, apply, initial_state, restore, snapshot
from streams.audit import live
from streams.audit.live import TP, Fenced, RunWrite
from streams.audit.recorder import decision_row, registry_row
from streams.audit.store import AuditStore
from streams.live.boundary import Message, decode
from streams.live.boundary import letter as rejected  # `letter` names a dead letter below
from streams.live.health import Metrics

RUN_NAMESPACE: Final = uuid.UUID("5e7c2a4e-6d1b-4f5e-9b1a-2f0c3d4e5a60")
"""uuid5 namespace of live run ids: run (name, domain) -> runs.run_id."""

WORKER_DOMAIN: Final = ""
"""The ``runs.domain`` of a worker run (not a valid routing domain, so no domain collides)."""


def live_run_id(run_name: str, domain: str) -> str:
    """The ``runs.run_id`` of the live run ``run_name`` for ``domain`` (deterministic)."""
    return str(uuid.uuid5(RUN_NAMESPACE, f"live\x1f{run_name}\x1f{domain}"))


def worker_run_id(run_name: str) -> str:
    return live_run_id(run_name, WORKER_DOMAIN)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One output record: a decision (routing or deployment), or a dead letter (``dead``),
    keyed by domain."""

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
    partition: int
    """The partition number the domain is consumed from (its key's)."""
    since_snapshot: int = 0


@dataclass(slots=True)
class Prepared:
    """A batch applied to the engine states, not yet committed."""

    writes: dict[str, RunWrite] = field(default_factory=dict)
    spans: dict[TP, tuple[int, int]] = field(default_factory=dict)
    """First and last offset applied per partition (what the commit moves the position to)."""
    offsets: dict[TP, int] = field(default_factory=dict)
    """Next offset to consume per partition, to commit to Kafka once the batch is stored."""
    epochs: dict[TP, int] = field(default_factory=dict)
    """The owner epoch of each partition when the batch was applied (its fence)."""
    out: list[Outgoing] = field(default_factory=list)
    records: int = 0
    """Input records applied (or dead-lettered) by the batch."""

    def absorb(self, later: Prepared) -> None:
        """Append a later batch, so that both are stored in one transaction (group commit):
        rows in order, spans widened, the later offsets, epochs and snapshots win."""
        for run_id, write in later.writes.items():
            mine = self.writes.get(run_id)
            if mine is None:
                self.writes[run_id] = write
                continue
            mine.journal.extend(write.journal)
            mine.routing.extend(write.routing)
            mine.deployments.extend(write.deployments)
            mine.dead_letters.extend(write.dead_letters)
            mine.models.extend(write.models)
            mine.snapshot = write.snapshot or mine.snapshot
        for tp, (first, last) in later.spans.items():
            self.spans[tp] = (self.spans.get(tp, (first, last))[0], last)
        self.offsets.update(later.offsets)
        self.epochs.update(later.epochs)
        self.out.extend(later.out)
        self.records += later.records


class Processor:
    """Engine states of the domains on the partitions this worker owns; one thread at a
    time (the checkpoint calls it from one executor thread)."""

    def __init__(self, store: AuditStore, run_name: str, config: EngineConfig, metrics: Metrics,
                 snapshot_every: int = 10_000, owner: str | None = None) -> None:
        self.store = store
        self.run_name = run_name
        self.config = config
        self.metrics = metrics
        self.snapshot_every = snapshot_every
        self.owner = owner or live.new_owner_id()
        self.worker_run = worker_run_id(run_name)
        self.runs: dict[str, DomainRun] = {}
        self.epochs: dict[TP, int] = {}
        self.positions: dict[TP, int] = {}
        """Highest offset applied per owned partition (committed, or prepared ahead of it)."""
        self._worker_run_ready = False

    # --- ownership -------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TP], committed: dict[TP, int]) -> list[Outgoing]:
        """Claim ``partitions``; returns the stored outputs of records past ``committed`` (the
        next offset Kafka's committed offsets say to read, per partition) to re-send."""
        self._ensure_worker_run()
        claims = live.claim(self.store, self.worker_run, list(partitions), self.owner)
        numbers = {p for _, p in claims}
        self._drop(lambda run: run.partition in numbers)
        resend: list[Outgoing] = []
        for tp, claimed in claims.items():
            self.epochs[tp] = claimed.epoch
            self.positions[tp] = claimed.offset
            after = committed.get(tp, 0) - 1
            if claimed.offset > after:
                resend.extend(self._stored_outputs(tp, after, claimed.offset))
        self.metrics.resent.inc(len(resend))
        return resend

    def revoke(self, partitions: Iterable[TP]) -> None:
        """Forget ``partitions`` and the states of the domains consumed from them."""
        for tp in partitions:
            self.epochs.pop(tp, None)
            self.positions.pop(tp, None)
        owned = {p for _, p in self.epochs}
        self._drop(lambda run: run.partition not in owned)

    def _lose(self, fenced: Iterable[TP]) -> set[int]:
        numbers = {p for _, p in fenced}
        self.revoke([tp for tp in self.epochs if tp[1] in numbers])
        self.metrics.fenced.inc(len(numbers))
        return numbers

    def _drop(self, doomed: Any) -> None:
        for domain in [d for d, run in self.runs.items() if doomed(run)]:
            del self.runs[domain]
        self.metrics.domains.set(len(self.runs))

    def _stored_outputs(self, tp: TP, after: int, upto: int) -> list[Outgoing]:
        ours = lambda run_id, domain: run_id == live_run_id(self.run_name, domain)  # noqa: E731
        out = []
        for _, domain, row in live.committed_outputs(self.store, tp, after, upto, ours):
            kind = row.pop("type")
            key = domain or DEFAULT_DOMAIN
            if kind == "dead_letter":
                letter = DeadLetter(domain=key, **row)
                out.append(Outgoing(True, key.encode(), encode(letter)))
                continue
            cls = RoutingDecision if kind == "routing_decision" else DeploymentDecision
            # As stored (the engine made it): not validated again.
            decision = cls.model_construct(**row, type=kind, domain=domain)
            out.append(Outgoing(False, domain.encode(), encode(decision)))
        return out

    # --- processing ----------------------------------------------------------------------

    def prepare(self, messages: Sequence[Message]) -> Prepared:
        """Step 1 of the module docstring."""
        batch = Prepared()
        todo: list[tuple[Message, Event | None, DeadLetter | None]] = []
        positions = dict(self.positions)
        for msg in messages:
            tp = (msg.topic, msg.partition)
            if tp not in self.epochs:
                continue
            batch.offsets[tp] = msg.offset + 1
            if msg.offset <= positions[tp]:
                self.metrics.skipped.inc()
                continue
            positions[tp] = msg.offset
            todo.append((msg, *decode(msg)))
        # Loads touch the database: all of them before any state changes.
        for msg, event, _ in todo:
            if event is not None and event.domain not in self.runs:
                self._load(event.domain, msg.partition)
        now = datetime.now(UTC)
        for msg, event, letter in todo:
            tp = (msg.topic, msg.partition)
            first = batch.spans.get(tp, (msg.offset, 0))[0]
            batch.spans[tp] = (first, msg.offset)
            source = {"src_topic": msg.topic, "src_partition": msg.partition,
                      "src_offset": msg.offset}
            run = self.runs.get(event.domain) if event is not None else None
            if event is not None and run is not None and run.partition != msg.partition:
                letter = rejected(msg, DeadLetterReason.KEY_MISMATCH,
                                  f"domain {event.domain!r} is consumed from partition "
                                  f"{run.partition}, not {msg.partition}",
                                  encode(event).decode())
            if letter is not None or event is None or run is None:
                assert letter is not None
                self._write(batch, self.worker_run).dead_letters.append(
                    {**decision_row(letter), **source})
                batch.out.append(Outgoing(True, letter.domain.encode(), encode(letter)))
                continue
            self._apply(batch, run, event, source, now)
        self.positions.update({tp: last for tp, (_, last) in batch.spans.items()})
        batch.epochs = {tp: self.epochs[tp] for tp in batch.spans}
        batch.records = len(todo)
        for run in self.runs.values():
            if run.since_snapshot >= self.snapshot_every:
                # Serialised now, stored in the batch's transaction: the state at its end.
                self._write(batch, run.run_id).snapshot = (run.state.seq, snapshot(run.state))
                run.since_snapshot = 0
        return batch

    def _apply(self, batch: Prepared, run: DomainRun, event: Event, source: dict[str, Any],
               now: datetime) -> None:
        write = self._write(batch, run.run_id)
        seq = run.state.seq
        _, outputs = apply(run.state, event)
        run.since_snapshot += 1
        write.journal.append({"seq": seq, "event_type": event.type, "event": encode(event),
                              "applied_at": now, **source})
        accepted = True
        key = run.domain.encode()
        for output in outputs:
            if isinstance(output, RoutingDecision):
                write.routing.append(decision_row(output))
            elif isinstance(output, DeploymentDecision):
                write.deployments.append(decision_row(output))
            else:
                accepted = False
                write.dead_letters.append({**decision_row(output), **source})
            batch.out.append(Outgoing(isinstance(output, DeadLetter), key, encode(output)))
        registry = registry_row(event, seq) if accepted else None
        if registry is not None:
            write.models.append(registry)

    @staticmethod
    def _write(batch: Prepared, run_id: str) -> RunWrite:
        write = batch.writes.get(run_id)
        if write is None:
            write = batch.writes[run_id] = RunWrite(run_id)
        return write

    def commit(self, batch: Prepared) -> set[int]:
        """Store the batch (``persist``, dropping what ``fence`` finds lost) and count it;
        returns the partition numbers found fenced (their records are not stored and their
        offsets must not be committed). A failure of the database raises and may be retried
        with the same ``batch``."""
        lost: set[int] = set()
        while True:
            try:
                self.persist(batch)
                break
            except Fenced as fenced:
                lost |= self.fence(batch, fenced)
        self.count(batch)
        return lost

    def persist(self, batch: Prepared) -> None:
        """Step 4 of ``streams.live.checkpoint``: the batch in one transaction under the
        fence of its epochs. Touches nothing of the processor but the database, so it may run
        on another thread than ``prepare`` (the checkpoint's persister). Raises ``Fenced``."""
        if batch.spans:
            live.commit(self.store, self.worker_run, batch.epochs, batch.spans,
                        batch.writes.values())

    def fence(self, batch: Prepared, fenced: Fenced) -> set[int]:
        """Forget the partitions another worker claimed, and their records and rows in
        ``batch``; returns their numbers."""
        lost = self._lose(fenced.partitions)
        _without(batch, lost, self.worker_run, {run.run_id for run in self.runs.values()})
        return lost

    def count(self, batch: Prepared) -> None:
        m, writes = self.metrics, batch.writes.values()
        m.events.inc(sum(len(w.journal) for w in writes))
        m.decisions.inc(sum(len(w.routing) for w in writes))
        m.deployments.inc(sum(len(w.deployments) for w in writes))
        m.dead_letters.inc(sum(len(w.dead_letters) for w in writes))
        m.snapshots.inc(sum(w.snapshot is not None for w in writes))

    def reset(self) -> None:
        """After a batch that can never commit: forget every state and prepared position, so
        that each is read again from the database."""
        self.runs.clear()
        stored = live.positions(self.store, self.worker_run)
        for tp in list(self.epochs):
            self.positions[tp] = stored[tp].offset if tp in stored else -1
        self.metrics.domains.set(0)

    # --- loading -------------------------------------------------------------------------

    def _ensure_worker_run(self) -> None:
        if self._worker_run_ready:
            return
        if self.store.get_run(self.worker_run) is None:
            config = self.config.model_copy(update={"domain": WORKER_DOMAIN})
            try:
                self.store.create_run("live", config.model_dump(mode="json"), config.seed,
                                      WORKER_DOMAIN, config.policy, run_id=self.worker_run,
                                      name=self.run_name)
            except Exception:
                if self.store.get_run(self.worker_run) is None:  # not a concurrent creator
                    raise
        self._worker_run_ready = True

    def _load(self, domain: str, partition: int) -> DomainRun:
        """The domain's run: created, or restored from its latest snapshot and the journal
        after it."""
        run_id = live_run_id(self.run_name, domain)
        config = self.config.model_copy(update={"domain": domain})
        wanted = config.model_dump(mode="json")
        run = self.store.get_run(run_id)
        if run is None:
            try:
                self.store.create_run("live", wanted, config.seed, domain, config.policy,
                                      run_id=run_id, name=self.run_name)
            except Exception:
                if self.store.get_run(run_id) is None:
                    raise
            state = initial_state(config)
        elif run["config"] != wanted:
            raise ConfigMismatch(
                f"live run {self.run_name!r} (domain {domain!r}, {run_id}) was started with "
                f"another engine config; use a new --run-id")
        else:
            state = load_state(self.store, run_id, config)
        loaded = self.runs[domain] = DomainRun(domain, run_id, state, partition)
        self.metrics.domains.set(len(self.runs))
        return loaded


def _without(batch: Prepared, numbers: set[int], worker_run: str, loaded: set[str]) -> None:
    """Remove the partitions ``numbers`` from a batch: their positions, offsets and rows (the
    domains consumed from them are no longer ``loaded``)."""
    batch.spans = {tp: s for tp, s in batch.spans.items() if tp[1] not in numbers}
    batch.offsets = {tp: o for tp, o in batch.offsets.items() if tp[1] not in numbers}
    for run_id, write in list(batch.writes.items()):
        if run_id == worker_run:
            write.dead_letters = [r for r in write.dead_letters
                                  if r["src_partition"] not in numbers]
        elif run_id not in loaded:
            del batch.writes[run_id]


# --- reads used on load -----------------------------------------------------------------------


def load_state(store: AuditStore, run_id: str, config: EngineConfig) -> EngineState:
    """The run's engine state as the database has it: latest snapshot + journal after it."""
    latest = store.latest_snapshot(run_id)
    state = initial_state(config) if latest is None else restore(latest[1])
    for seq, event in store.journal(run_id, from_seq=state.seq):
        if seq != state.seq:
            raise RuntimeError(f"run {run_id}: journal gap, expected seq {state.seq}, got {seq}")
        apply(state, decode_event(event))
    return state

"""The live worker's side of the audit store: partition claims, fenced batch commits, and the
committed outputs of an input window (to re-send what a crash left unsent).

Positions and fences live in ``live_partitions``, one row per input (topic, partition) of a
worker run: ``offset`` is the highest input offset whose effects are committed and ``epoch``
the fence. ``claim`` bumps the epoch of every partition a worker is assigned; ``commit`` writes a
whole batch in ONE transaction that first locks the batch's partition rows (``FOR UPDATE``) and
checks that each still carries the epoch this worker claimed. A worker that lost a partition
(paused past its session, slow, cut off) therefore fails with ``Fenced`` and writes nothing,
however late its transaction comes; a row lock, not a timestamp, decides.

Inserts are strict (``COPY``, no ``ON CONFLICT``): under the fence nothing should ever collide,
so a collision (a journal ``seq`` stored twice, say) is an error that aborts the batch, never a
silent no-op. The one legitimate repeat, a retry of a batch whose COMMIT succeeded although the
connection broke before its answer came back, is recognised by the positions: every partition
of the batch already at or past the batch's last offset (``commit`` returns False).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from streams.audit.models import (
    DeadLetterRow,
    DeploymentDecisionRow,
    JournalEntry,
    RoutingDecisionRow,
    Run,
)
from streams.audit.store import (
    _DEAD_LETTER,
    _DEPLOYMENT,
    _JOURNAL,
    _ROUTING,
    AuditStore,
    _Target,
    _write_models,
)

TP = tuple[str, int]
"""An input (topic, partition)."""

SOURCE: Final = ("src_topic", "src_partition", "src_offset")
SNAPSHOTS_KEPT: Final = 2
"""Snapshots kept per run; older ones are deleted when a new one is stored."""

_JOURNAL_LIVE: Final = _Target(_JOURNAL.table, (*_JOURNAL.columns, *SOURCE), _JOURNAL.key,
                               _JOURNAL.json, _JOURNAL.defaults)
_DEAD_LETTER_LIVE: Final = _Target(_DEAD_LETTER.table, (*_DEAD_LETTER.columns, *SOURCE),
                                   _DEAD_LETTER.key, _DEAD_LETTER.json, _DEAD_LETTER.defaults)


class Fenced(Exception):
    """Another worker claimed these partitions since this one did: nothing was written."""

    def __init__(self, partitions: Iterable[TP]) -> None:
        self.partitions = sorted(partitions)
        super().__init__(f"partitions claimed by another worker: {self.partitions}")


class PositionConflict(RuntimeError):
    """A batch overlaps what is committed for its partitions: two writers, or a bug."""


@dataclass(frozen=True, slots=True)
class Claim:
    epoch: int
    offset: int
    """Highest committed input offset (-1: none)."""


@dataclass(slots=True)
class RunWrite:
    """One run's rows of a batch (dicts as ``AuditStore.write_batch`` takes them; journal and
    dead-letter dicts also carry ``src_topic``, ``src_partition``, ``src_offset``)."""

    run_id: str
    journal: list[dict[str, Any]] = field(default_factory=list)
    routing: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    snapshot: tuple[int, bytes] | None = None


def claim(store: AuditStore, worker_run: str, partitions: Sequence[TP],
          owner: str) -> dict[TP, Claim]:
    """Take ownership of ``partitions``: bump each one's epoch (creating its row at epoch 1);
    returns the new epochs and the committed positions."""
    if not partitions:
        return {}
    sql = ('INSERT INTO live_partitions (run_id, topic, "partition", epoch, owner) '
           "VALUES (%s, %s, %s, 1, %s) ON CONFLICT (run_id, topic, \"partition\") DO UPDATE "
           "SET epoch = live_partitions.epoch + 1, owner = EXCLUDED.owner, claimed_at = now() "
           'RETURNING epoch, "offset"')
    found: dict[TP, Claim] = {}
    with _cursor(store) as cur:
        for topic, partition in sorted(partitions):
            cur.execute(sql, (worker_run, topic, partition, owner))
            epoch, offset = cur.fetchone()
            found[(topic, partition)] = Claim(epoch, offset)
    return found


def commit(store: AuditStore, worker_run: str, epochs: Mapping[TP, int],
           spans: Mapping[TP, tuple[int, int]], writes: Iterable[RunWrite]) -> bool:
    """Store one batch under the fence; True if written, False if it was already (a retry
    after an ambiguous COMMIT). ``spans``: first and last input offset the batch applied per
    partition. Raises ``Fenced`` (nothing written) or ``PositionConflict``."""
    tps = sorted(spans)
    with _cursor(store) as cur:
        cur.execute(
            'SELECT topic, "partition", "offset", epoch FROM live_partitions '
            'WHERE run_id = %s AND (topic, "partition") IN (SELECT * FROM unnest(%s::text[], '
            '%s::bigint[])) ORDER BY topic, "partition" FOR UPDATE',
            (worker_run, [t for t, _ in tps], [p for _, p in tps]))
        stored = {(t, p): (o, e) for t, p, o, e in cur.fetchall()}
        fenced = [tp for tp in tps if tp not in stored or stored[tp][1] != epochs.get(tp)]
        if fenced:
            raise Fenced(fenced)
        if all(stored[tp][0] >= last for tp, (_, last) in spans.items()):
            return False
        overlap = [tp for tp, (first, _) in spans.items() if stored[tp][0] >= first]
        if overlap:
            raise PositionConflict(
                f"batch starts at or below the committed offset of {overlap}")
        cur.executemany(
            'UPDATE live_partitions SET "offset" = %s WHERE run_id = %s AND topic = %s '
            'AND "partition" = %s', [(last, worker_run, t, p) for (t, p), (_, last)
                                     in spans.items()])
        for write in writes:
            rid = write.run_id
            for target, rows in ((_JOURNAL_LIVE, write.journal), (_ROUTING, write.routing),
                                 (_DEPLOYMENT, write.deployments),
                                 (_DEAD_LETTER_LIVE, write.dead_letters)):
                _copy(cur, target, rid, rows)
            _write_models(cur, rid, write.models)
            if write.snapshot is not None:
                seq, state = write.snapshot
                cur.execute("INSERT INTO snapshots (run_id, seq, state) VALUES (%s, %s, %s) "
                            "ON CONFLICT DO NOTHING", (rid, seq, state))
                cur.execute(
                    "DELETE FROM snapshots WHERE run_id = %s AND seq < (SELECT min(seq) FROM "
                    "(SELECT seq FROM snapshots WHERE run_id = %s ORDER BY seq DESC LIMIT %s) "
                    "AS kept)", (rid, rid, SNAPSHOTS_KEPT))
    return True


def positions(store: AuditStore, worker_run: str) -> dict[TP, Claim]:
    """Every partition row of the worker run."""
    with _cursor(store) as cur:
        cur.execute('SELECT topic, "partition", epoch, "offset" FROM live_partitions '
                    "WHERE run_id = %s", (worker_run,))
        return {(t, p): Claim(e, o) for t, p, e, o in cur.fetchall()}


def committed_outputs(store: AuditStore, tp: TP, after: int, upto: int,
                      ours: Callable[[str, str], bool]) -> list[tuple[int, str, Any]]:
    """``(input offset, domain, stored output row)`` of every routing decision, deployment
    decision and dead letter made from input records ``after < offset <= upto`` of ``tp``, in
    input order, for the runs ``ours(run_id, domain)`` accepts. Output rows are dicts of the
    contract fields, with ``type``."""
    topic, partition = tp
    found: list[tuple[int, int, int, str, Any]] = []
    j, runs = JournalEntry.__table__, Run.__table__
    in_window = (j.c.src_topic == topic, j.c.src_partition == partition,
                 j.c.src_offset > after, j.c.src_offset <= upto)
    with store.engine.connect() as conn:
        domains = {str(r): d for r, d in conn.execute(
            select(runs.c.run_id, runs.c.domain).where(runs.c.kind == "live"))}
        mine = {r for r, d in domains.items() if ours(r, d)}
        offsets: dict[tuple[str, int], int] = {}
        for run_id, seq, offset in conn.execute(
                select(j.c.run_id, j.c.seq, j.c.src_offset).where(*in_window)):
            if str(run_id) in mine:
                offsets[(str(run_id), seq)] = offset
        by_run: dict[str, list[int]] = {}
        for run_id, seq in offsets:
            by_run.setdefault(run_id, []).append(seq)
        for table, kind, rank in ((DeploymentDecisionRow.__table__, "deployment_decision", 0),
                                  (RoutingDecisionRow.__table__, "routing_decision", 1)):
            columns = [c for c in table.c if c.name not in ("id", "run_id")]
            for run_id, seqs in by_run.items():
                stmt = select(*columns).where(table.c.run_id == run_id, table.c.seq.in_(seqs))
                for row in conn.execute(stmt).mappings():
                    found.append((offsets[(run_id, row["seq"])], row["seq"], rank,
                                  domains[run_id], {**row, "type": kind}))
        d = DeadLetterRow.__table__
        stmt = select(d.c.run_id, d.c.seq, d.c.reason, d.c.detail, d.c.payload,
                      d.c.src_offset).where(d.c.src_topic == topic,
                                            d.c.src_partition == partition,
                                            d.c.src_offset > after, d.c.src_offset <= upto)
        for row in conn.execute(stmt).mappings():
            run_id = str(row["run_id"])
            if run_id in mine or (run_id in domains and not domains[run_id]):
                letter = {k: row[k] for k in ("seq", "reason", "detail", "payload")}
                found.append((row["src_offset"], row["seq"] or 0, 2, domains[run_id],
                              {**letter, "type": "dead_letter"}))
    found.sort(key=lambda item: item[:3])
    return [(offset, domain, row) for offset, _, _, domain, row in found]


def new_owner_id() -> str:
    return uuid.uuid4().hex[:12]


@contextlib.contextmanager
def _cursor(store: AuditStore) -> Iterator[psycopg.Cursor[Any]]:
    """A psycopg cursor in one transaction of the store's pool; psycopg errors are re-raised
    as SQLAlchemy's (``OperationalError`` for a lost server), like the rest of the store."""
    try:
        with store.engine.begin() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            with driver.cursor() as cur:
                yield cur
    except psycopg.Error as exc:
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc


def _copy(cur: psycopg.Cursor[Any], target: _Target, run_id: str,
          rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    make = target.row_maker(run_id)
    columns = "run_id, " + ", ".join(f'"{c}"' for c in target.columns)
    with cur.copy(f"COPY {target.table.name} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(make(row))

"""The Postgres audit store: runs, the event journal, decisions, dead letters, the model
registry, consumer tracking and snapshots.

Writes are batched and idempotent. ``write_batch`` stores everything one step of a worker (or a
chunk of a backtest) produced in ONE transaction, inserting with ``ON CONFLICT DO NOTHING`` on
each table's unique key, so redelivering a batch adds nothing. Consumer tracking rows are the
gate: when a batch carries tracking rows and every one of them is already stored, the batch is a
duplicate delivery and nothing else is written either.

Per table, the fastest way that still skips stored rows:

* fewer than ``COPY_THRESHOLD`` rows (a live worker's step): one
  ``INSERT ... VALUES ... ON CONFLICT DO NOTHING``;
* many rows, none stored yet (a backtest chunk): ``COPY`` straight into the table, under a
  savepoint;
* many rows, some stored (a redelivered or half-written chunk, spotted by probing the first
  and last row's key, or by the ``COPY`` failing on a duplicate): ``COPY`` into a temporary
  table, then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.

``python -m bench.audit`` measures these against SQLAlchemy's ``executemany`` and
``insertmanyvalues``: on a 2-core machine COPY is 3-6x faster.

Row dicts use the column names of ``streams.audit.models``, which are the field names of the
contract models in ``schemas.decisions``: ``RoutingDecision.model_dump()`` can be passed as is
(``schema_version``, ``type`` and ``domain`` are ignored). JSON columns take a Python value or
its JSON text (``str``/``bytes``), e.g. the wire bytes of an event.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from sqlalchemy import URL, Engine, Select, Table, Text, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from streams.audit.db import dumps, make_engine
from streams.audit.models import (
    RUN_KINDS,
    RUN_STATUSES,
    ConsumerTracking,
    DeadLetterRow,
    DeploymentDecisionRow,
    JournalEntry,
    ModelRegistryRow,
    RoutingDecisionRow,
    Run,
    Snapshot,
)

Row = Mapping[str, Any]
_ID_PREFIX: Final = re.compile(r"[0-9a-f-]{4,36}")


class RunNotFound(LookupError):
    """No run, or more than one, matches a reference; the message says which."""

TrackingKey = tuple[str, int, int]
"""A consumed input position: (topic, partition, offset)."""

COPY_THRESHOLD: Final = 16
"""Tables with at least this many rows in a batch are loaded with COPY, smaller ones with one
multi-row INSERT. Measured (2 cores, PG 15): both take ~4 ms for 8-16 rows (the commit's fsync
dominates), but at 64 rows the INSERT takes 2.5x as long as COPY."""

_READ_CHUNK: Final = 2000


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    return dumps(value)


@dataclass(frozen=True)
class _Target:
    """How the dicts of one table become rows: columns besides ``run_id``, in order."""

    table: Table
    columns: tuple[str, ...]
    key: tuple[str, ...]
    """The unique key's columns besides ``run_id``."""
    json: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Columns that may be absent from a dict, with the value to store then."""

    def row_maker(self, run_id: str) -> Callable[[Row], list[Any]]:
        """A function from a dict to the row ``[run_id, *columns]``."""
        get = itemgetter(*self.columns)
        json_at = [i for i, name in enumerate(self.columns, start=1) if name in self.json]
        defaults = self.defaults

        def make(row: Row) -> list[Any]:
            values = [run_id, *get({**defaults, **row} if defaults else row)]
            for i in json_at:
                values[i] = _json(values[i])
            return values

        return make


_JOURNAL: Final = _Target(
    JournalEntry.__table__,
    ("seq", "event_type", "event", "applied_at"),
    ("seq",),
    json=frozenset({"event"}),
    defaults={"applied_at": None},
)
_ROUTING: Final = _Target(
    RoutingDecisionRow.__table__,
    ("seq", "query_id", "stage", "time", "policy", "model_id", "deployed", "mu_u", "c_l",
     "alpha", "budget", "p", "draw", "status", "cached"),
    ("seq",),
    json=frozenset({"deployed", "mu_u", "c_l", "alpha", "p"}),
)
_DEPLOYMENT: Final = _Target(
    DeploymentDecisionRow.__table__,
    ("seq", "stage", "time", "policy", "reason", "candidates", "mu_u", "c_l", "alpha", "budget",
     "m_max", "selected", "d", "objective", "status"),
    ("seq",),
    json=frozenset({"candidates", "mu_u", "c_l", "alpha", "selected", "d"}),
)
_DEAD_LETTER: Final = _Target(
    DeadLetterRow.__table__,
    ("seq", "reason", "detail", "payload"),
    ("seq",),
    defaults={"seq": None},
)
_TRACKING: Final = _Target(ConsumerTracking.__table__, ("topic", "partition", "offset"),
                           ("topic", "partition", "offset"))

_MODEL_COLUMNS: Final = ("model_id", "alpha", "cost_min", "cost_max", "metadata", "arrived_seq",
                         "expired_seq")
_MODEL_DEFAULTS: Final[dict[str, Any]] = {"cost_min": None, "cost_max": None, "metadata": {},
                          "expired_seq": None}

ROUTING_FIELDS: Final = _ROUTING.columns
"""Keys of a routing decision dict, in column order."""
DEPLOYMENT_FIELDS: Final = _DEPLOYMENT.columns
"""Keys of a deployment decision dict, in column order."""
DEAD_LETTER_FIELDS: Final = _DEAD_LETTER.columns
"""Keys of a dead letter dict, in column order."""
MODEL_FIELDS: Final = _MODEL_COLUMNS
"""Keys of a model registry dict, in column order."""


def _quoted(columns: Iterable[str]) -> str:
    # "offset" and "partition" are SQL keywords.
    return ", ".join(f'"{c}"' for c in columns)


def _run_uuid(run_id: str | uuid.UUID) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise ValueError(f"not a run id (UUID): {run_id!r}") from None


def _any_stored(cur: psycopg.Cursor[Any], target: _Target, run_id: str,
                rows: Sequence[Row]) -> bool:
    """Whether the first or last row's key is already stored: two index probes that spot a
    redelivered batch before a doomed COPY of all of it."""
    where = " AND ".join(f'"{c}" = %s' for c in ("run_id", *target.key))
    for row in (rows[0], rows[-1]):
        key = [row.get(c) for c in target.key]
        if None in key:  # e.g. a dead letter without seq: no key to probe
            continue
        cur.execute(f"SELECT 1 FROM {target.table.name} WHERE {where}", [run_id, *key])
        if cur.fetchone() is not None:
            return True
    return False


def _bulk_insert(cur: psycopg.Cursor[Any], target: _Target, run_id: str,
                 rows: Sequence[Row]) -> int:
    """Insert ``rows`` into ``target``'s table, skipping those whose unique key exists;
    returns how many were new."""
    if not rows:
        return 0
    make = target.row_maker(run_id)
    table = target.table.name
    columns = "run_id, " + _quoted(target.columns)
    if len(rows) < COPY_THRESHOLD:
        one = "(" + ", ".join(["%s"] * (len(target.columns) + 1)) + ")"
        cur.execute(
            f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(rows))} "
            "ON CONFLICT DO NOTHING",
            [v for row in rows for v in make(row)],
        )
        return cur.rowcount
    # Optimistic: a new batch (a backtest chunk) conflicts with nothing, and COPY straight
    # into the table is the fastest load there is. On a conflict (a redelivered or partly
    # stored batch) undo it and take the conflict-skipping path below.
    # Rows are made while COPY streams, so this process formats while the server inserts.
    if not _any_stored(cur, target, run_id, rows):
        cur.execute("SAVEPOINT bulk_insert")
        try:
            with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(make(row))
        except psycopg.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT bulk_insert")
        else:
            cur.execute("RELEASE SAVEPOINT bulk_insert")
            return len(rows)
    # COPY cannot skip conflicts: stage the rows in a temporary table (the target's column
    # types, none of its constraints), then move the new ones over.
    staging = f"_staging_{table}"
    cur.execute(
        f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS "
        f"SELECT {columns} FROM {table} WITH NO DATA"
    )
    with cur.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(make(row))
    cur.execute(
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} "
        "ON CONFLICT DO NOTHING"
    )
    inserted = cur.rowcount
    # Dropped now rather than at commit, so the name is free for the next call either way.
    cur.execute(f"DROP TABLE {staging}")
    return inserted


_MODEL_UPSERT: Final = (
    f"INSERT INTO model_registry (run_id, {_quoted(_MODEL_COLUMNS)}) "
    f"VALUES (%s, {', '.join(['%s'] * len(_MODEL_COLUMNS))}) "
    # Registered already: only a first expiry is taken from the row.
    "ON CONFLICT (run_id, model_id) DO UPDATE SET expired_seq = EXCLUDED.expired_seq "
    "WHERE model_registry.expired_seq IS NULL AND EXCLUDED.expired_seq IS NOT NULL"
)


def _write_models(cur: psycopg.Cursor[Any], run_id: str, models: Sequence[Row]) -> int:
    """Register arrivals and record expiries, in order; returns rows inserted or changed.

    A dict with ``alpha`` is a full registry row (``MODEL_FIELDS``; ``cost_min``,
    ``cost_max``, ``metadata`` and ``expired_seq`` may be absent): inserted if new; if the
    model is already registered, only a first ``expired_seq`` is taken from it. A dict without
    ``alpha`` (``model_id`` and ``expired_seq`` only) marks an expiry of a registered model.
    """
    changed = 0
    for row in models:
        if "alpha" in row:
            values = {**_MODEL_DEFAULTS, **row}
            params = [values[c] for c in _MODEL_COLUMNS]
            params[_MODEL_COLUMNS.index("metadata")] = _json(values["metadata"])
            cur.execute(_MODEL_UPSERT, [run_id, *params])
            changed += cur.rowcount
            continue
        cur.execute(
            "UPDATE model_registry SET expired_seq = %s "
            "WHERE run_id = %s AND model_id = %s AND expired_seq IS NULL",
            (row["expired_seq"], run_id, row["model_id"]),
        )
        updated = cur.rowcount
        if updated == 0:
            cur.execute("SELECT 1 FROM model_registry WHERE run_id = %s AND model_id = %s",
                        (run_id, row["model_id"]))
            if cur.fetchone() is None:
                raise LookupError(
                    f"expiry of model {row['model_id']!r}, which run {run_id} never registered"
                )
        changed += updated
    return changed


class AuditStore:
    """Reads and writes the audit trail in the database at ``url`` (migrated to head; see
    ``streams.audit.migrate``). Thread-safe; holds a connection pool until ``close``."""

    def __init__(self, url: str | URL, **engine_kwargs: Any) -> None:
        self.engine: Engine = make_engine(url, **engine_kwargs)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- runs ------------------------------------------------------------------------------

    def create_run(self, kind: str, config: Mapping[str, Any], seed: int, domain: str,
                   policy: str, *, run_id: str | uuid.UUID | None = None,
                   name: str | None = None, invocation_id: str | None = None) -> str:
        """Record a new run (status ``running``); returns its id (a new UUID unless given).
        ``name``: what the run was started as (a live worker's ``--run-id``);
        ``invocation_id``: shared by the runs of one backtest command."""
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {RUN_KINDS}, not {kind!r}")
        rid = str(uuid.uuid4()) if run_id is None else _run_uuid(run_id)
        with self.engine.begin() as conn:
            conn.execute(insert(Run.__table__).values(
                run_id=rid, kind=kind, config=dict(config), seed=seed, domain=domain,
                policy=policy, name=name,
                invocation_id=None if invocation_id is None else _run_uuid(invocation_id),
            ))
        return rid

    def finish_run(self, run_id: str, summary: Mapping[str, Any],
                   status: str = "finished") -> None:
        """Mark the run ended now, with its summary and final status (``RUN_STATUSES``)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
        runs = Run.__table__
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs).where(runs.c.run_id == _run_uuid(run_id))
                .values(finished_at=func.now(), status=status, summary=dict(summary))
            )
        if result.rowcount == 0:
            raise LookupError(f"no run {run_id}")

    def interrupt_invocation(self, invocation_id: str) -> int:
        """Mark the runs of a backtest command that did not finish ``interrupted``; returns
        how many. Their stored trail is a consistent prefix (every batch is one transaction),
        which ``audit verify`` still checks."""
        runs = Run.__table__
        with self.engine.begin() as conn:
            return conn.execute(
                update(runs).where(runs.c.invocation_id == _run_uuid(invocation_id),
                                   runs.c.status == "running")
                .values(status="interrupted", finished_at=func.now())).rowcount

    def list_runs(self, limit: int | None = None,
                  invocation_prefix: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first (at most ``limit``; of one backtest command if given a prefix
        of its invocation id)."""
        runs = Run.__table__
        stmt = select(runs).order_by(runs.c.created_at.desc(), runs.c.run_id.desc())
        if invocation_prefix is not None:
            stmt = stmt.where(func.cast(runs.c.invocation_id, Text)
                              .startswith(invocation_prefix.lower()))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt if limit is None else stmt.limit(limit))
            return [dict(row) for row in rows.mappings()]

    def find_run(self, ref: str, domain: str | None = None) -> dict[str, Any]:
        """The run ``ref`` names: a run id, a unique prefix of one (4+ characters), or a run
        name (a live worker's ``--run-id``; with ``domain`` if the name has runs in several).
        Raises ``RunNotFound`` naming what was tried, or listing the candidates."""
        runs = Run.__table__
        ref = ref.strip()
        clauses = [runs.c.name == ref]
        if _ID_PREFIX.fullmatch(ref.lower()):
            clauses.append(func.cast(runs.c.run_id, Text).startswith(ref.lower()))
        stmt = select(runs).where(or_(*clauses))
        if domain is not None:
            stmt = stmt.where(runs.c.domain == domain)
        with self.engine.connect() as conn:
            found = [dict(r) for r in conn.execute(stmt.order_by(runs.c.created_at.desc(),
                                                                 runs.c.run_id))
                     .mappings()]
        by_name = [r for r in found if r["name"] == ref]
        matches = by_name or found
        where = "" if domain is None else f" in domain {domain!r}"
        if not matches:
            raise RunNotFound(f"no run {ref!r}{where} (a run id, a unique id prefix or a run "
                              "name; see: stageroute audit runs)")
        if len(matches) > 1:
            listed = ", ".join(f"{r['run_id']} ({r['policy']}, domain {r['domain']})"
                               for r in matches[:6])
            more = f" and {len(matches) - 6} more" if len(matches) > 6 else ""
            hint = "--domain or a longer prefix" if by_name else "a longer prefix"
            raise RunNotFound(f"{ref!r}{where} matches {len(matches)} runs: {listed}{more}; "
                              f"give {hint}")
        return matches[0]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        runs = Run.__table__
        with self.engine.connect() as conn:
            row = conn.execute(
                select(runs).where(runs.c.run_id == _run_uuid(run_id))
            ).mappings().first()
        return None if row is None else dict(row)

    # --- writes ----------------------------------------------------------------------------

    def write_batch(
        self,
        run_id: str,
        journal: Sequence[Row],
        routing: Sequence[Row],
        deployments: Sequence[Row],
        dead_letters: Sequence[Row],
        models: Sequence[Row],
        tracking: Sequence[TrackingKey] = (),
    ) -> int:
        """Store one batch in one transaction; returns the number of rows that were new.

        ``journal`` dicts: ``seq``, ``event_type``, ``event`` (JSON), optional ``applied_at``.
        ``routing``/``deployments``/``dead_letters``: the decision fields (``ROUTING_FIELDS``,
        ...). ``models``: see ``_write_models``. ``tracking``: the input positions the batch
        consumed.

        Rows already stored (same unique key) are skipped, so writing a batch twice changes
        nothing the second time. If ``tracking`` is given and all of it is already stored, the
        whole batch is a redelivery and is skipped (this also covers dead letters without
        ``seq``, which have no key of their own).
        """
        rid = _run_uuid(run_id)
        tracking_rows = [{"topic": t, "partition": p, "offset": o} for t, p, o in tracking]
        with self.engine.begin() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            try:
                with driver.cursor() as cur:
                    new = _bulk_insert(cur, _TRACKING, rid, tracking_rows)
                    if tracking_rows and new == 0:
                        return 0
                    for target, rows in ((_JOURNAL, journal), (_ROUTING, routing),
                                         (_DEPLOYMENT, deployments),
                                         (_DEAD_LETTER, dead_letters)):
                        new += _bulk_insert(cur, target, rid, rows)
                    new += _write_models(cur, rid, models)
            except psycopg.Error as exc:
                # Raise what SQLAlchemy raises for the same failure elsewhere in this class
                # (e.g. IntegrityError for an unknown run), not the driver's own class.
                raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc
        return new

    def save_snapshot(self, run_id: str, seq: int, state: bytes) -> bool:
        """Store a state snapshot at ``seq``; False if one was already stored there."""
        table = Snapshot.__table__
        stmt = (pg_insert(table).values(run_id=_run_uuid(run_id), seq=seq, state=state)
                .on_conflict_do_nothing().returning(table.c.id))
        with self.engine.begin() as conn:
            # RETURNING rather than rowcount, which SQLAlchemy keeps for UPDATE/DELETE only.
            return conn.execute(stmt).first() is not None

    # --- reads -----------------------------------------------------------------------------

    def _stream(self, stmt: Select[Any]) -> Iterator[dict[str, Any]]:
        # A server-side cursor: a 10^5-row run is not loaded into memory at once.
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=_READ_CHUNK).execute(stmt)
            for row in result.mappings():
                yield dict(row)

    def routing_decisions(self, run_id: str, query_id: str | None = None,
                          stage: int | None = None) -> Iterator[dict[str, Any]]:
        """Routing decisions of the run in ``seq`` order, optionally of one query or stage;
        dicts with the keys ``ROUTING_FIELDS``."""
        t = RoutingDecisionRow.__table__
        stmt = select(*(t.c[c] for c in ROUTING_FIELDS)).where(t.c.run_id == _run_uuid(run_id))
        if query_id is not None:
            stmt = stmt.where(t.c.query_id == query_id)
        if stage is not None:
            stmt = stmt.where(t.c.stage == stage)
        return self._stream(stmt.order_by(t.c.seq))

    def deployment_decisions(self, run_id: str) -> list[dict[str, Any]]:
        """Deployment decisions of the run in ``seq`` order (keys ``DEPLOYMENT_FIELDS``)."""
        t = DeploymentDecisionRow.__table__
        stmt = (select(*(t.c[c] for c in DEPLOYMENT_FIELDS))
                .where(t.c.run_id == _run_uuid(run_id)).order_by(t.c.seq))
        return list(self._stream(stmt))

    def dead_letters(self, run_id: str) -> list[dict[str, Any]]:
        """Dead letters of the run in ``seq`` order, those without ``seq`` last in the order
        they were stored (keys ``DEAD_LETTER_FIELDS`` and ``created_at``)."""
        t = DeadLetterRow.__table__
        stmt = (select(*(t.c[c] for c in DEAD_LETTER_FIELDS), t.c.created_at)
                .where(t.c.run_id == _run_uuid(run_id))
                .order_by(t.c.seq.asc().nulls_last(), t.c.id))
        return list(self._stream(stmt))

    def journal(self, run_id: str, from_seq: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(seq, event)`` of every journaled event with ``seq >= from_seq``, in order."""
        t = JournalEntry.__table__
        stmt = (select(t.c.seq, t.c.event)
                .where(t.c.run_id == _run_uuid(run_id), t.c.seq >= from_seq)
                .order_by(t.c.seq))
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=_READ_CHUNK).execute(stmt)
            yield from map(tuple, result)

    def models(self, run_id: str) -> list[dict[str, Any]]:
        """The run's model registry in arrival order (keys ``MODEL_FIELDS``)."""
        t = ModelRegistryRow.__table__
        stmt = (select(*(t.c[c] for c in MODEL_FIELDS))
                .where(t.c.run_id == _run_uuid(run_id)).order_by(t.c.arrived_seq))
        return list(self._stream(stmt))

    def latest_snapshot(self, run_id: str) -> tuple[int, bytes] | None:
        """The snapshot with the highest ``seq``, or None."""
        t = Snapshot.__table__
        stmt = (select(t.c.seq, t.c.state).where(t.c.run_id == _run_uuid(run_id))
                .order_by(t.c.seq.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else (row.seq, bytes(row.state))

    def tracking_seen(self, run_id: str, topic: str, partition: int, offset: int) -> bool:
        """Whether the input position's effects are already stored."""
        t = ConsumerTracking.__table__
        stmt = select(t.c.id).where(t.c.run_id == _run_uuid(run_id), t.c.topic == topic,
                                    t.c.partition == partition, t.c.offset == offset)
        with self.engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def row_counts(self, run_id: str) -> dict[str, int]:
        """Rows per audit table for the run (table name -> count)."""
        rid = _run_uuid(run_id)
        tables = [JournalEntry, RoutingDecisionRow, DeploymentDecisionRow, DeadLetterRow,
                  ModelRegistryRow, ConsumerTracking, Snapshot]
        with self.engine.connect() as conn:
            return {
                m.__tablename__: conn.execute(
                    select(func.count()).select_from(m.__table__)
                    .where(m.__table__.c.run_id == rid)
                ).scalar_one()
                for m in tables
            }

"""The audit trail's tables, as SQLAlchemy 2.0 typed declarative models.

Alembic owns the schema (``migrations/``); these models are its ``target_metadata`` and the
column list the store reads and writes. The application never calls ``create_all``.

Every row belongs to a run (``runs.run_id``); deleting a run deletes its rows (``CASCADE``).
Decision columns carry exactly the field names of the contract models in ``schemas.decisions``
(minus ``schema_version``, ``type`` and ``domain``, which are per run or implied by the table).

Types: per-model lists and free-form documents are ``JSONB``; floats are ``double precision``
(bit-exact both ways); integers from the contract (``seq``, ``stage``, ...) are ``BIGINT``
because the contract bounds them below only; wall-clock times are ``timestamptz``, event times
stay seconds in ``double precision`` as the contract has them.

Unique keys make writes idempotent: the store inserts with ``ON CONFLICT DO NOTHING``, so a
redelivered batch adds nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_KINDS: Final = ("backtest", "live")
RUN_STATUSES: Final = ("running", "finished", "interrupted", "failed")

# Stable, predictable constraint names, so migrations can name what they drop.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = dict[str, Any]
JsonList = list[Any]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every model here is mapped to a Table (not a join or subquery); say so to the type checker.
    __table__: ClassVar[Table]
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads it as a class attribute
        int: BigInteger(),
        float: Double(),
        str: Text(),
        bool: Boolean(),
        datetime: DateTime(timezone=True),
        Json: JSONB(),
        JsonList: JSONB(),
    }


def _id() -> Mapped[int]:
    return mapped_column(BigInteger, Identity(always=True), primary_key=True)


def _run_fk() -> Mapped[str]:
    return mapped_column(
        Uuid(as_uuid=False), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False
    )


def _created_at() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


class Run(Base):
    """One engine run: a backtest over a file or a live worker, with its full config."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"kind IN {RUN_KINDS!r}", name="kind"),
        CheckConstraint(f"status IN {RUN_STATUSES!r}", name="status"),
        Index(None, "created_at"),
        Index(None, "name", "domain"),
        Index(None, "invocation_id"),
    )

    run_id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    kind: Mapped[str]
    name: Mapped[str | None]
    """What the run was started as: a live worker's ``--run-id``; with ``domain`` it names
    a live run."""
    invocation_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    """Links the runs of one backtest command (oracle, policies, seeds)."""
    domain: Mapped[str]
    policy: Mapped[str]
    config: Mapped[Json]
    """The full engine configuration the run used."""
    seed: Mapped[int]
    created_at: Mapped[datetime] = _created_at()
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(server_default="running")
    """``running``, ``finished``, ``interrupted`` (stopped early: the trail is incomplete) or
    ``failed``."""
    summary: Mapped[Json | None]


def _source_index(table: str) -> Index:
    # A short explicit name: PostgreSQL cuts identifiers at 63 bytes.
    return Index(f"ix_{table}_src", "src_topic", "src_partition", "src_offset",
                 postgresql_where=text("src_offset IS NOT NULL"))


class JournalEntry(Base):
    """Every event the engine applied, in the order it applied it (``seq``)."""

    __tablename__ = "event_journal"
    __table_args__ = (UniqueConstraint("run_id", "seq"), _source_index("event_journal"))

    id: Mapped[int] = _id()
    run_id: Mapped[str] = _run_fk()
    seq: Mapped[int]
    event_type: Mapped[str]
    event: Mapped[Json]
    """The validated event as JSON (the wire form)."""
    applied_at: Mapped[datetime | None]
    """Wall-clock time the live worker applied it; NULL in backtests."""
    src_topic: Mapped[str | None]
    """Input position (topic, partition, offset) the live worker consumed it at; NULL in
    backtests."""
    src_partition: Mapped[int | None]
    src_offset: Mapped[int | None]


class RoutingDecisionRow(Base):
    """RouteOPT's distribution for one query, its inputs and the model drawn.

    Unique per ``seq`` (the query event's): a query id the engine has forgotten may come again
    and is then a new query with a decision of its own (see ``stageroute.engine.core``)."""

    __tablename__ = "routing_decisions"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        Index(None, "run_id", "query_id"),
        Index(None, "run_id", "stage", "seq"),
    )

    id: Mapped[int] = _id()
    run_id: Mapped[str] = _run_fk()
    seq: Mapped[int]
    query_id: Mapped[str]
    stage: Mapped[int]
    time: Mapped[float]
    policy: Mapped[str]
    model_id: Mapped[str]
    deployed: Mapped[JsonList]
    mu_u: Mapped[JsonList]
    c_l: Mapped[JsonList]
    alpha: Mapped[JsonList]
    budget: Mapped[float]
    p: Mapped[JsonList]
    draw: Mapped[float]
    status: Mapped[str]
    cached: Mapped[bool]


class DeploymentDecisionRow(Base):
    """DeployOPT's deployment set for a stage, with its inputs."""

    __tablename__ = "deployment_decisions"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        Index(None, "run_id", "stage"),
    )

    id: Mapped[int] = _id()
    run_id: Mapped[str] = _run_fk()
    seq: Mapped[int]
    stage: Mapped[int]
    time: Mapped[float]
    policy: Mapped[str]
    reason: Mapped[str]
    candidates: Mapped[JsonList]
    mu_u: Mapped[JsonList]
    c_l: Mapped[JsonList]
    alpha: Mapped[JsonList]
    budget: Mapped[float]
    m_max: Mapped[int]
    selected: Mapped[JsonList]
    d: Mapped[JsonList]
    objective: Mapped[float]
    status: Mapped[str]


class DeadLetterRow(Base):
    """A rejected input event with its reason.

    ``seq`` is set when the event was journaled before being rejected; such a row is unique per
    ``(run_id, seq)`` (an event is rejected at most once). Rows without ``seq`` (input that never
    decoded) have no natural key: a redelivery of them is caught by the consumer tracking rows
    written in the same batch (see ``AuditStore.write_batch``).
    """

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index(
            "uq_dead_letters_run_id_seq",
            "run_id",
            "seq",
            unique=True,
            postgresql_where=text("seq IS NOT NULL"),
        ),
        Index(None, "run_id"),
        _source_index("dead_letters"),
    )

    id: Mapped[int] = _id()
    run_id: Mapped[str] = _run_fk()
    seq: Mapped[int | None]
    reason: Mapped[str]
    detail: Mapped[str]
    payload: Mapped[str]
    created_at: Mapped[datetime] = _created_at()
    src_topic: Mapped[str | None]
    """Input position of a live worker's dead letter (NULL in backtests)."""
    src_partition: Mapped[int | None]
    src_offset: Mapped[int | None]


class ModelRegistryRow(Base):
    """A model's life in a run: when it arrived and (if) when it expired, by journal seq."""

    __tablename__ = "model_registry"
    __table_args__ = (UniqueConstraint("run_id", "model_id"),)

    id: Mapped[int] = _id()
    run_id: Mapped[str] = _run_fk()
    model_id: Mapped[str]
    alpha: Mapped[float]
    cost_min: Mapped[float | None]
    cost_max: Mapped[float | None]
    # `metadata` is reserved on declarative classes; the column keeps the contract's name.
    metadata_: Mapped[Json] = mapped_column("metadata", server_default=text("'{}'::jsonb"))
    arrived_seq: Mapped[int]
    expired_seq: Mapped[int | None]


class ConsumerTracking(Base):
    """Input positions whose effects are committed; a redelivered position is a duplicate.

    Written by ``AuditStore.write_batch`` callers that pass tracking rows; the live worker keeps
    one row per partition in ``live_partitions`` instead."""

    __tablename__ = "consumer_tracking"
    __table_args__ = (UniqueConstraint("run_id", "topic", "partition", "offset"),)

    id: Mapped[int] = _id()
    run_id: Mapped[str] = _run_fk()
    topic: Mapped[str]
    partition: Mapped[int]
    offset: Mapped[int]


class LivePartition(Base):
    """One input partition of a live run: its committed position and its owner's fence.

    ``offset`` is the highest input offset whose effects (journal, decisions, dead letters) are
    committed; a record at or below it is a redelivery. ``epoch`` is bumped by every worker that
    is assigned the partition; a batch commits only under the epoch its worker claimed, so a
    worker that lost the partition (paused, slow, cut off) can never write for it again."""

    __tablename__ = "live_partitions"

    run_id: Mapped[str] = mapped_column(
        Uuid(as_uuid=False), ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    topic: Mapped[str] = mapped_column(primary_key=True)
    partition: Mapped[int] = mapped_column(primary_key=True)
    offset: Mapped[int] = mapped_column(server_default=text("-1"))
    epoch: Mapped[int] = mapped_column(server_default=text("0"))
    owner: Mapped[str] = mapped_column(server_default="")
    claimed_at: Mapped[datetime] = _created_at()


class Snapshot(Base):
    """Serialized engine state at journal position ``seq``.

    By the engine's convention ``seq`` is ``EngineState.seq``, the sequence number of the next
    event to apply: a restored state resumes the journal from ``seq``.
    """

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = _id()
    run_id: Mapped[str] = _run_fk()
    seq: Mapped[int]
    state: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _created_at()


metadata: Final = Base.metadata
"""All audit tables; Alembic's ``target_metadata``."""

"""Initial audit schema.

Tables: runs, event journal, routing and deployment decisions, dead letters, model registry,
consumer tracking, snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False)


def _run_id(table: str) -> list[sa.Column[str] | sa.ForeignKeyConstraint]:
    return [
        sa.Column("run_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f(f"fk_{table}_run_id_runs"), ondelete="CASCADE"
        ),
    ]


# Names are final (op.f): the target metadata's naming convention must not be applied again.


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("config", JSONB(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(),
                  nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.Text(), server_default="running", nullable=False),
        sa.Column("summary", JSONB(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
        sa.CheckConstraint("kind IN ('backtest', 'live')", name=op.f("ck_runs_kind")),
    )
    op.create_index(op.f("ix_runs_created_at"), "runs", ["created_at"])

    op.create_table(
        "event_journal",
        _id(),
        *_run_id("event_journal"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("event", JSONB(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_journal")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_event_journal_run_id_seq")),
    )

    op.create_table(
        "routing_decisions",
        _id(),
        *_run_id("routing_decisions"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("query_id", sa.Text(), nullable=False),
        sa.Column("stage", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("deployed", JSONB(), nullable=False),
        sa.Column("mu_u", JSONB(), nullable=False),
        sa.Column("c_l", JSONB(), nullable=False),
        sa.Column("alpha", JSONB(), nullable=False),
        sa.Column("budget", sa.Double(), nullable=False),
        sa.Column("p", JSONB(), nullable=False),
        sa.Column("draw", sa.Double(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_decisions")),
        sa.UniqueConstraint(
            "run_id", "query_id", name=op.f("uq_routing_decisions_run_id_query_id")
        ),
    )
    op.create_index(op.f("ix_routing_decisions_run_id_seq"), "routing_decisions", ["run_id", "seq"])
    op.create_index(
        op.f("ix_routing_decisions_run_id_stage_seq"), "routing_decisions",
        ["run_id", "stage", "seq"],
    )

    op.create_table(
        "deployment_decisions",
        _id(),
        *_run_id("deployment_decisions"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("stage", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("candidates", JSONB(), nullable=False),
        sa.Column("mu_u", JSONB(), nullable=False),
        sa.Column("c_l", JSONB(), nullable=False),
        sa.Column("alpha", JSONB(), nullable=False),
        sa.Column("budget", sa.Double(), nullable=False),
        sa.Column("m_max", sa.BigInteger(), nullable=False),
        sa.Column("selected", JSONB(), nullable=False),
        sa.Column("d", JSONB(), nullable=False),
        sa.Column("objective", sa.Double(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment_decisions")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_deployment_decisions_run_id_seq")),
    )
    op.create_index(
        op.f("ix_deployment_decisions_run_id_stage"), "deployment_decisions", ["run_id", "stage"]
    )

    op.create_table(
        "dead_letters",
        _id(),
        *_run_id("dead_letters"),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    # Partial: rows without seq (input that never decoded) have no natural key.
    op.create_index(
        op.f("uq_dead_letters_run_id_seq"), "dead_letters", ["run_id", "seq"], unique=True,
        postgresql_where=sa.text("seq IS NOT NULL"),
    )
    op.create_index(op.f("ix_dead_letters_run_id"), "dead_letters", ["run_id"])

    op.create_table(
        "model_registry",
        _id(),
        *_run_id("model_registry"),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("alpha", sa.Double(), nullable=False),
        sa.Column("cost_min", sa.Double(), nullable=True),
        sa.Column("cost_max", sa.Double(), nullable=True),
        sa.Column("metadata", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("arrived_seq", sa.BigInteger(), nullable=False),
        sa.Column("expired_seq", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_registry")),
        sa.UniqueConstraint(
            "run_id", "model_id", name=op.f("uq_model_registry_run_id_model_id")
        ),
    )

    op.create_table(
        "consumer_tracking",
        _id(),
        *_run_id("consumer_tracking"),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumer_tracking")),
        sa.UniqueConstraint(
            "run_id", "topic", "partition", "offset",
            name=op.f("uq_consumer_tracking_run_id_topic_partition_offset"),
        ),
    )

    op.create_table(
        "snapshots",
        _id(),
        *_run_id("snapshots"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_snapshots_run_id_seq")),
    )


def downgrade() -> None:
    # Children first; their indexes and constraints go with them.
    for table in (
        "snapshots",
        "consumer_tracking",
        "model_registry",
        "dead_letters",
        "deployment_decisions",
        "routing_decisions",
        "event_journal",
        "runs",
    ):
        op.drop_table(table)

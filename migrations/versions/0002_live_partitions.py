"""Live scale-out: partition ownership and positions, source positions, decisions keyed by seq.

* ``live_partitions``: one row per input partition a live run consumes (the run is the
  worker run of ``streams.live.processor.worker_run_id``): the highest offset whose effects are
  committed, and the owner epoch that fences a worker which lost the partition. Replaces the
  live worker's use of ``consumer_tracking`` (one row per consumed record).
* ``event_journal`` and ``dead_letters`` record the input position (topic, partition, offset)
  of a live event, so outputs committed but not sent can be found and re-sent.
* ``routing_decisions`` is unique per ``(run_id, seq)``: a query id forgotten by the engine may
  be reused, and the reuse is then a new query with a decision of its own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SOURCE = ("src_topic", "src_partition", "src_offset")


def upgrade() -> None:
    op.create_table(
        "live_partitions",
        sa.Column("run_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), server_default="-1", nullable=False),
        sa.Column("epoch", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("owner", sa.Text(), server_default="", nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"],
                                name=op.f("fk_live_partitions_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "topic", "partition", name=op.f("pk_live_partitions")),
    )
    for table in ("event_journal", "dead_letters"):
        op.add_column(table, sa.Column("src_topic", sa.Text(), nullable=True))
        op.add_column(table, sa.Column("src_partition", sa.BigInteger(), nullable=True))
        op.add_column(table, sa.Column("src_offset", sa.BigInteger(), nullable=True))
        op.create_index(op.f(f"ix_{table}_src"), table, list(_SOURCE),
                        postgresql_where=sa.text("src_offset IS NOT NULL"))
    op.drop_constraint("uq_routing_decisions_run_id_query_id", "routing_decisions")
    op.drop_index("ix_routing_decisions_run_id_seq", "routing_decisions")
    op.create_unique_constraint(op.f("uq_routing_decisions_run_id_seq"), "routing_decisions",
                                ["run_id", "seq"])
    op.create_index(op.f("ix_routing_decisions_run_id_query_id"), "routing_decisions",
                    ["run_id", "query_id"])


def downgrade() -> None:
    op.drop_index("ix_routing_decisions_run_id_query_id", "routing_decisions")
    op.drop_constraint("uq_routing_decisions_run_id_seq", "routing_decisions")
    op.create_index("ix_routing_decisions_run_id_seq", "routing_decisions", ["run_id", "seq"])
    # Fails if a query id was reused (two rows): such a run cannot go back to the old key.
    op.create_unique_constraint("uq_routing_decisions_run_id_query_id", "routing_decisions",
                                ["run_id", "query_id"])
    for table in ("dead_letters", "event_journal"):
        op.drop_index(f"ix_{table}_src", table)
        for column in reversed(_SOURCE):
            op.drop_column(table, column)
    op.drop_table("live_partitions")

"""Runs you can find, and the audit trail by SQL.

* ``runs.name``: the name a run was started under (a live worker's ``--run-id``); with
  ``domain`` it names a live run. ``runs.invocation_id``: links the runs of one backtest
  command (the oracle and every policy, every seed).
* ``runs.status`` is one of ``running``, ``finished``, ``interrupted`` (a backtest stopped by
  Ctrl-C or SIGTERM: its trail is incomplete) or ``failed``.
* Views for analysts (documented in the README, "The audit trail by SQL"):
  ``run_summaries`` (one row per run with its headline figures), ``routing_outcomes`` (every
  routing decision with the probability of the model drawn and the feedback it got) and
  ``deployments_per_stage`` (one row per deployment decision and candidate model).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATUSES = ("running", "finished", "interrupted", "failed")

# jsonb arrays are parallel: element i of mu_u, c_l, alpha, p (d) belongs to model i of
# deployed (candidates). `->> (i - 1)` picks element i (jsonb arrays count from 0,
# WITH ORDINALITY from 1).
VIEWS = {
    "run_summaries": """
        SELECT r.run_id, r.name AS run_name, r.kind, r.domain, r.policy, r.status, r.seed,
               r.invocation_id, r.created_at, r.finished_at,
               (r.summary ->> 'queries')::bigint AS queries,
               (r.summary ->> 'avg_reward')::double precision AS avg_reward,
               (r.summary ->> 'avg_cost')::double precision AS avg_cost,
               (r.summary ->> 'budget')::double precision AS budget,
               (r.summary ->> 'pct_of_oracle')::double precision AS pct_of_oracle,
               (r.summary ->> 'regret')::double precision AS regret
        FROM runs r
    """,
    "routing_outcomes": """
        SELECT d.run_id, r.name AS run_name, r.domain, d.query_id, d.seq, d.stage,
               d.time, d.policy, d.model_id,
               (d.p ->> (chosen.i - 1)::int)::double precision AS probability,
               (d.mu_u ->> (chosen.i - 1)::int)::double precision AS mu_u,
               (d.c_l ->> (chosen.i - 1)::int)::double precision AS c_l,
               d.budget, d.status, d.deployed,
               (f.event ->> 'reward')::double precision AS reward,
               (f.event ->> 'cost')::double precision AS cost,
               (f.event ->> 'time')::double precision AS feedback_time,
               f.applied_at AS feedback_applied_at
        FROM routing_decisions d
        JOIN runs r ON r.run_id = d.run_id
        CROSS JOIN LATERAL (
            SELECT m.i FROM jsonb_array_elements_text(d.deployed) WITH ORDINALITY AS m(id, i)
            WHERE m.id = d.model_id
        ) AS chosen
        LEFT JOIN (
            -- accepted feedback only: a rejected one (duplicate, wrong model, ...) has a
            -- dead letter with its journal seq
            SELECT j.run_id, j.seq, j.event, j.applied_at FROM event_journal j
            WHERE j.event_type = 'feedback' AND NOT EXISTS (
                SELECT 1 FROM dead_letters x WHERE x.run_id = j.run_id AND x.seq = j.seq)
        ) AS f ON f.run_id = d.run_id AND f.event ->> 'query_id' = d.query_id
            -- a reused query id: feedback belongs to the newest decision before it
            AND f.seq > d.seq AND NOT EXISTS (
                SELECT 1 FROM routing_decisions d2
                WHERE d2.run_id = d.run_id AND d2.query_id = d.query_id
                  AND d2.seq > d.seq AND d2.seq < f.seq)
    """,
    "deployments_per_stage": """
        SELECT d.run_id, r.name AS run_name, r.domain, d.stage, d.seq, d.time, d.policy,
               d.reason, c.id AS model_id, d.selected ? c.id AS deployed,
               (d.d ->> (c.i - 1)::int)::double precision AS weight,
               (d.mu_u ->> (c.i - 1)::int)::double precision AS mu_u,
               (d.c_l ->> (c.i - 1)::int)::double precision AS c_l,
               (d.alpha ->> (c.i - 1)::int)::double precision AS alpha,
               d.budget, d.m_max, d.status
        FROM deployment_decisions d
        JOIN runs r ON r.run_id = d.run_id
        CROSS JOIN LATERAL jsonb_array_elements_text(d.candidates) WITH ORDINALITY AS c(id, i)
    """,
}


def upgrade() -> None:
    op.add_column("runs", sa.Column("name", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("invocation_id", sa.Uuid(as_uuid=False), nullable=True))
    op.create_index(op.f("ix_runs_name_domain"), "runs", ["name", "domain"])
    op.create_index(op.f("ix_runs_invocation_id"), "runs", ["invocation_id"])
    op.create_check_constraint(op.f("ck_runs_status"), "runs",
                               f"status IN {RUN_STATUSES!r}")
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW {name}")
    op.drop_constraint(op.f("ck_runs_status"), "runs", type_="check")
    op.drop_index(op.f("ix_runs_invocation_id"), "runs")
    op.drop_index(op.f("ix_runs_name_domain"), "runs")
    op.drop_column("runs", "invocation_id")
    op.drop_column("runs", "name")

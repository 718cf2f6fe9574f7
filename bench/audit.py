"""Write-throughput benchmark of the audit store (not a test: it prints figures).

    python -m bench.audit [--url URL] [--queries 100000]

Creates a scratch database on the server at ``--url`` (default ``$STAGEROUTE_DB_URL``, else the
embedded server), migrates it, and writes a backtest-sized batch (``--queries`` routing
decisions, twice as many journal rows) three ways, each into a fresh run:

* ``copy``: ``AuditStore.write_batch`` (COPY into a temporary table, INSERT ... SELECT ...
  ON CONFLICT DO NOTHING);
* ``executemany``: SQLAlchemy Core ``insert().on_conflict_do_nothing()`` with a list of dicts
  (psycopg's pipelined ``executemany``);
* ``insertmanyvalues``: the same with ``RETURNING`` (SQLAlchemy batches 1000 rows into one
  multi-row INSERT).

Then it writes the ``copy`` batch again (all duplicates) and times small batches (one query's
worth of rows, a live worker's step). The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from sqlalchemy import URL, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert

from streams.audit import migrate
from streams.audit.db import make_engine, normalize_url
from streams.audit.embedded import resolve_url
from streams.audit.models import DeploymentDecisionRow, JournalEntry, RoutingDecisionRow
from streams.audit.store import AuditStore, Row

MODELS = [f"model-{i}" for i in range(11)]


def synthetic_batch(queries: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Rows shaped like a backtest's: a query and a feedback event per routed query."""
    rng = random.Random(seed)
    journal: list[dict[str, Any]] = []
    routing: list[dict[str, Any]] = []
    deployments: list[dict[str, Any]] = []
    stage_len = max(queries // 50, 1)
    deployed = MODELS[:4]
    for q in range(queries):
        seq, t, qid = 2 * q, q * 0.5, f"q{q:07d}"
        if q % stage_len == 0:
            deployed = rng.sample(MODELS, 4)
            deployments.append({
                "seq": seq, "stage": q // stage_len, "time": t, "policy": "stageroute",
                "reason": "stage_boundary", "candidates": MODELS,
                "mu_u": [rng.random() for _ in MODELS], "c_l": [rng.random() / 100 for _ in MODELS],
                "alpha": [0.5] * len(MODELS), "budget": 0.002, "m_max": 4, "selected": deployed,
                "d": [rng.random() for _ in MODELS], "objective": rng.random(),
                "status": "optimal",
            })
        journal.append({"seq": seq, "event_type": "query", "event": {
            "schema_version": 1, "type": "query", "domain": "default", "time": t,
            "query_id": qid, "features": {"task": "mbpp", "prompt_tokens": rng.randrange(2000)}}})
        model = rng.choice(deployed)
        journal.append({"seq": seq + 1, "event_type": "feedback", "event": {
            "schema_version": 1, "type": "feedback", "domain": "default", "time": t + 0.25,
            "query_id": qid, "model_id": model, "reward": rng.random(),
            "cost": rng.random() / 100}})
        routing.append({
            "seq": seq, "query_id": qid, "stage": q // stage_len, "time": t,
            "policy": "stageroute", "model_id": model, "deployed": deployed,
            "mu_u": [rng.random() for _ in deployed], "c_l": [rng.random() / 100 for _ in deployed],
            "alpha": [0.5] * 4, "budget": 0.002, "p": [0.25] * 4, "draw": rng.random(),
            "status": "optimal", "cached": q % 3 != 0,
        })
    return {"journal": journal, "routing": routing, "deployments": deployments}


def _core_insert(returning: bool) -> Callable[[Any, str, Table, Sequence[Row]], int]:
    def write(conn: Any, run_id: str, table: Table, rows: Sequence[Row]) -> int:
        if not rows:
            return 0
        stmt = pg_insert(table).on_conflict_do_nothing()
        params = [{**row, "run_id": run_id} for row in rows]
        if returning:
            return len(conn.execute(stmt.returning(table.c.id), params).all())
        # SQLAlchemy reports no rowcount for executemany INSERTs; count afterwards instead.
        conn.execute(stmt, params)
        return len(rows)
    return write


def _write_core(store: AuditStore, run_id: str, batch: dict[str, list[dict[str, Any]]],
                returning: bool) -> int:
    write = _core_insert(returning)
    with store.engine.begin() as conn:
        return (write(conn, run_id, JournalEntry.__table__, batch["journal"])
                + write(conn, run_id, RoutingDecisionRow.__table__, batch["routing"])
                + write(conn, run_id, DeploymentDecisionRow.__table__, batch["deployments"]))


def _timed(label: str, rows: int, fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    new = fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<34} {elapsed:7.2f} s  {rows / elapsed:>10,.0f} rows/s  ({new:,} new)")
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="server URL (default $STAGEROUTE_DB_URL or embedded)")
    parser.add_argument("--queries", type=int, default=100_000)
    args = parser.parse_args(argv)

    server: URL = normalize_url(resolve_url(args.url))
    scratch = f"stageroute_bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {scratch}")
    url = server.set(database=scratch)
    try:
        migrate.upgrade(url)
        t0 = time.perf_counter()
        batch = synthetic_batch(args.queries)
        rows = sum(len(v) for v in batch.values())
        print(f"{rows:,} rows ({args.queries:,} routing decisions), "
              f"generated in {time.perf_counter() - t0:.1f} s; server {server.host}")
        with AuditStore(url) as store:
            def run() -> str:
                return store.create_run("backtest", {"bench": True}, 0, "default", "stageroute")

            copy_run = run()
            _timed("copy (write_batch)", rows, lambda: store.write_batch(
                copy_run, batch["journal"], batch["routing"], batch["deployments"], [], []))
            _timed("copy, same batch again (no-op)", rows, lambda: store.write_batch(
                copy_run, batch["journal"], batch["routing"], batch["deployments"], [], []))
            # The last row of each table already stored: the conflict-skipping path
            # (COPY into a temporary table, INSERT ... SELECT ... ON CONFLICT DO NOTHING).
            staged_run = run()
            store.write_batch(staged_run, batch["journal"][-1:], batch["routing"][-1:],
                              batch["deployments"][-1:], [], [])
            _timed("copy via staging (partly stored)", rows, lambda: store.write_batch(
                staged_run, batch["journal"], batch["routing"], batch["deployments"], [], []))
            for label, returning in (("executemany (SQLAlchemy Core)", False),
                                     ("insertmanyvalues (RETURNING)", True)):
                rid = run()
                _timed(label, rows, partial(_write_core, store, rid, batch, returning))

            small = synthetic_batch(200, seed=1)
            small_run = run()
            start = time.perf_counter()
            for i in range(200):
                store.write_batch(small_run, small["journal"][2 * i:2 * i + 2],
                                  small["routing"][i:i + 1], [], [], [],
                                  tracking=[("queries", 0, i)])
            per = (time.perf_counter() - start) / 200
            print(f"{'small batches (3 rows + tracking)':<34} {per * 1e3:7.2f} ms per batch")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
        admin.dispose()


if __name__ == "__main__":
    main()

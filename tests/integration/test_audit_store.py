"""The audit store against a real PostgreSQL: migrations, idempotent batches, readers, and
exact floats. Each test gets a fresh migrated database (``migrated_db``)."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, pool, text
from sqlalchemy.exc import IntegrityError

from schemas import (
    DeadLetter,
    DeadLetterReason,
    DeploymentDecision,
    Feedback,
    ModelArrived,
    Query,
    RoutingDecision,
    decode_event,
    encode,
)
from streams.audit import migrate
from streams.audit.db import make_engine
from streams.audit.models import metadata
from streams.audit.store import COPY_THRESHOLD, AuditStore

pytestmark = pytest.mark.integration

DOMAIN = "default"
MODELS = ["m-a", "m-b", "m-c"]
# Both write paths: a multi-row INSERT below the threshold, COPY at or above it.
SIZES = [pytest.param(3, id="insert"), pytest.param(COPY_THRESHOLD + 5, id="copy")]

Batch = dict[str, Any]


@pytest.fixture
def store(migrated_db: str) -> Iterator[AuditStore]:
    with AuditStore(migrated_db) as audit_store:
        yield audit_store


@pytest.fixture
def new_run(store: AuditStore) -> Callable[..., str]:
    def make(kind: str = "backtest", seed: int = 7) -> str:
        config = {"policy": "stageroute", "budget": 0.002, "m_max": 2, "seed": seed}
        return store.create_run(kind, config, seed, DOMAIN, "stageroute")

    return make


# --- contract-valid rows ------------------------------------------------------------------


def routing_decision(i: int, stage: int = 0) -> RoutingDecision:
    rng = random.Random(i)
    return RoutingDecision(
        domain=DOMAIN, query_id=f"q{i:05d}", seq=2 * i + 1, stage=stage, time=i * 0.1,
        policy="stageroute", model_id=MODELS[i % 2], deployed=MODELS[:2],
        mu_u=[rng.random(), 1.0], c_l=[rng.random() / 100, 0.0], alpha=[0.5, 1.0],
        budget=0.002, p=[0.25, 0.75], draw=rng.random(), status="optimal", cached=i % 2 == 0,
    )


def deployment_decision(seq: int, stage: int) -> DeploymentDecision:
    return DeploymentDecision(
        domain=DOMAIN, seq=seq, stage=stage, time=seq * 0.1, policy="stageroute",
        reason="stage_boundary", candidates=MODELS, mu_u=[1.0, 0.5, 0.25],
        c_l=[0.001, 0.002, 0.0], alpha=[0.5, 0.5, 1.0], budget=0.002, m_max=2,
        selected=MODELS[:2], d=[0.5, 0.5, 0.0], objective=0.75, status="optimal",
    )


def journal_row(seq: int, as_bytes: bool) -> dict[str, Any]:
    event = (Query(time=seq * 0.1, query_id=f"q{seq:05d}") if seq % 2 else
             Feedback(time=seq * 0.1, query_id=f"q{seq:05d}", model_id="m-a", reward=0.5,
                      cost=0.001))
    # The event column takes the wire bytes as they are, or a dict.
    payload = encode(event) if as_bytes else event.model_dump(mode="json")
    return {"seq": seq, "event_type": event.type, "event": payload}


def make_batch(n: int, start: int = 0) -> Batch:
    """``n`` routing decisions and journal rows (from ``start``), one deployment decision,
    dead letters with and without seq, a model arrival, and tracking rows."""
    seqs = range(start, start + n)
    return {
        "journal": [journal_row(s, as_bytes=s % 3 == 0) for s in seqs],
        "routing": [routing_decision(s, stage=s // 10).model_dump() for s in seqs],
        "deployments": [deployment_decision(start, stage=start // 10).model_dump()],
        "dead_letters": [
            DeadLetter(domain=DOMAIN, seq=start, reason=DeadLetterReason.UNKNOWN_QUERY,
                       detail="query_id: 'x' was never routed", payload='{"x":1}').model_dump(),
            DeadLetter(domain=DOMAIN, reason=DeadLetterReason.MALFORMED, detail="not JSON",
                       payload=f"garbage {start}").model_dump(),
        ],
        "models": [{"model_id": f"m{start}", "alpha": 0.5, "cost_min": 0.0, "cost_max": 0.01,
                    "metadata": {"family": "test"}, "arrived_seq": start}],
        "tracking": [("queries", 0, offset) for offset in seqs],
    }


def write(store: AuditStore, run_id: str, batch: Batch, tracking: bool = True) -> int:
    return store.write_batch(run_id, batch["journal"], batch["routing"], batch["deployments"],
                             batch["dead_letters"], batch["models"],
                             batch["tracking"] if tracking else [])


def expected_rows(batch: Batch, tracking: bool = True) -> int:
    keys = ["journal", "routing", "deployments", "dead_letters", "models"]
    return sum(len(batch[k]) for k in keys) + (len(batch["tracking"]) if tracking else 0)


# --- migrations ---------------------------------------------------------------------------


def schema_diff(url: str) -> list[Any]:
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = list(compare_metadata(context, metadata))
    engine.dispose()
    return diff


def schema_object_names(url: str) -> set[str]:
    """Constraint and index names of our tables (Alembic does not compare check constraints
    or partial-index predicates, so names and predicates are checked here)."""
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
            "AND contype IN ('p', 'u', 'f', 'c', 'x') "
            "UNION SELECT indexname || coalesce(' WHERE ' || pg_get_expr(i.indpred, i.indrelid),"
            " '') FROM pg_indexes JOIN pg_index i ON i.indexrelid = "
            "(quote_ident(schemaname) || '.' || quote_ident(indexname))::regclass "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )).scalars().all()
    engine.dispose()
    return {name for name in rows if not name.startswith("alembic_version")}


def model_object_names() -> set[str]:
    names: set[str] = set()
    for table in metadata.tables.values():
        names.update(str(c.name) for c in table.constraints)
        for index in table.indexes:
            where = index.dialect_options["postgresql"]["where"]
            names.add(str(index.name) + (f" WHERE ({where})" if where is not None else ""))
        # Unique constraints and primary keys are backed by an index of the same name.
        names.update(str(c.name) for c in table.constraints
                     if c.__visit_name__ in ("unique_constraint", "primary_key_constraint"))
    return names


def test_migrations_match_models_and_downgrade_drops_everything(migrated_db: str) -> None:
    assert migrate.current_revision(migrated_db) == migrate.head_revision()
    assert schema_diff(migrated_db) == []
    assert schema_object_names(migrated_db) == model_object_names()

    migrate.downgrade(migrated_db, "base")
    engine = make_engine(migrated_db, poolclass=pool.NullPool)
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == ["alembic_version"]
        assert conn.execute(text(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relname NOT LIKE 'alembic_version%'"
        )).scalar_one() == 0  # no leftover indexes or identity sequences either
    engine.dispose()
    assert migrate.current_revision(migrated_db) is None

    migrate.upgrade(migrated_db)
    assert migrate.current_revision(migrated_db) == migrate.head_revision()
    assert schema_diff(migrated_db) == []


# --- idempotency --------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_same_batch_twice_writes_nothing_the_second_time(
    store: AuditStore, new_run: Callable[..., str], n: int
) -> None:
    run_id = new_run()
    batch = make_batch(n)
    assert write(store, run_id, batch) == expected_rows(batch)
    counts = store.row_counts(run_id)
    assert counts["routing_decisions"] == n
    assert counts["event_journal"] == n
    assert counts["consumer_tracking"] == n
    assert counts["dead_letters"] == 2

    assert write(store, run_id, batch) == 0
    assert store.row_counts(run_id) == counts


@pytest.mark.parametrize("n", SIZES)
def test_keyed_rows_are_deduplicated_without_tracking(
    store: AuditStore, new_run: Callable[..., str], n: int
) -> None:
    run_id = new_run()
    batch = make_batch(n)
    batch["dead_letters"] = batch["dead_letters"][:1]  # only the one with a seq (a key)
    assert write(store, run_id, batch, tracking=False) == expected_rows(batch, tracking=False)
    counts = store.row_counts(run_id)
    assert write(store, run_id, batch, tracking=False) == 0
    assert store.row_counts(run_id) == counts


@pytest.mark.parametrize("n", SIZES)
def test_partly_stored_batch_adds_only_the_new_rows(
    store: AuditStore, new_run: Callable[..., str], n: int
) -> None:
    run_id = new_run()
    first = make_batch(n)
    second = make_batch(n, start=n // 2)  # overlaps the first half-way
    write(store, run_id, first)
    new = write(store, run_id, second)
    fresh = n // 2
    # journal, routing, tracking: the non-overlapping part; deployment decision, both dead
    # letters and the model: new keys.
    assert new == 3 * fresh + 1 + 2 + 1
    counts = store.row_counts(run_id)
    assert counts["routing_decisions"] == counts["event_journal"] == n + fresh
    assert [r["seq"] for r in store.routing_decisions(run_id)] == [
        2 * i + 1 for i in range(n + fresh)
    ]


def test_tracking_gates_a_redelivered_batch(
    store: AuditStore, new_run: Callable[..., str]
) -> None:
    run_id = new_run()
    batch = make_batch(2)
    assert not store.tracking_seen(run_id, "queries", 0, 1)
    write(store, run_id, batch)
    assert store.tracking_seen(run_id, "queries", 0, 1)
    assert not store.tracking_seen(run_id, "queries", 1, 1)
    assert not store.tracking_seen(new_run(), "queries", 0, 1)

    # The dead letter without seq has no key of its own; the tracking rows stop its copy.
    assert write(store, run_id, batch) == 0
    assert len(store.dead_letters(run_id)) == 2


def test_batch_is_one_transaction(store: AuditStore, new_run: Callable[..., str]) -> None:
    run_id = new_run()
    batch = make_batch(COPY_THRESHOLD + 1)
    batch["models"].append({"model_id": "never-arrived", "expired_seq": 3})
    with pytest.raises(LookupError, match="never-arrived"):
        write(store, run_id, batch)
    assert set(store.row_counts(run_id).values()) == {0}

    unknown_run = "00000000-0000-4000-8000-000000000000"
    for batch, tracking in ((make_batch(1), True), (make_batch(COPY_THRESHOLD), False)):
        with pytest.raises(IntegrityError):  # no such run: the foreign key refuses the rows
            write(store, unknown_run, batch, tracking)


def test_model_registry_records_arrival_then_expiry(
    store: AuditStore, new_run: Callable[..., str]
) -> None:
    run_id = new_run()
    arrived = ModelArrived(time=1.0, model_id="m-x", alpha=0.25, cost_max=0.02,
                           metadata={"vendor": "acme", "ctx": 8192})
    row = {"model_id": arrived.model_id, "alpha": arrived.alpha, "cost_min": arrived.cost_min,
           "cost_max": arrived.cost_max, "metadata": arrived.metadata, "arrived_seq": 4}
    assert store.write_batch(run_id, [], [], [], [], [row]) == 1
    assert store.write_batch(run_id, [], [], [], [], [row]) == 0
    expiry = {"model_id": "m-x", "expired_seq": 9}
    assert store.write_batch(run_id, [], [], [], [], [expiry]) == 1
    assert store.write_batch(run_id, [], [], [], [], [expiry]) == 0
    assert store.write_batch(run_id, [], [], [], [], [{**row, "expired_seq": 12}]) == 0
    assert store.models(run_id) == [{**row, "expired_seq": 9}]


# --- readers ------------------------------------------------------------------------------


def test_readers_return_what_was_written_in_seq_order(
    store: AuditStore, new_run: Callable[..., str]
) -> None:
    run_id = new_run()
    other_run = new_run()
    n = COPY_THRESHOLD * 2
    decisions = [routing_decision(i, stage=i // 40) for i in range(n)]
    shuffled = decisions[:]
    random.Random(1).shuffle(shuffled)
    journal = [journal_row(s, as_bytes=s % 2 == 0) for s in range(n)]
    random.Random(2).shuffle(journal)
    deployments = [deployment_decision(80, 2), deployment_decision(0, 0),
                   deployment_decision(40, 1)]
    dead = [
        DeadLetter(domain=DOMAIN, reason=DeadLetterReason.MALFORMED, detail="d1", payload="p1"),
        DeadLetter(domain=DOMAIN, seq=7, reason=DeadLetterReason.DUPLICATE_QUERY, detail="d2",
                   payload="p2"),
        DeadLetter(domain=DOMAIN, seq=3, reason=DeadLetterReason.UNKNOWN_MODEL, detail="d3",
                   payload="p3\\x00 \u00e9"),
    ]
    # Two batches, each out of order, plus a decoy run that must not leak into the reads.
    half = n // 2
    for part in (slice(0, half), slice(half, n)):
        store.write_batch(run_id, journal[part], [d.model_dump() for d in shuffled[part]],
                          [d.model_dump() for d in deployments], [d.model_dump() for d in dead],
                          [])
    store.write_batch(other_run, journal, [d.model_dump() for d in decisions[:5]], [], [], [])

    read = [RoutingDecision(domain=DOMAIN, **row) for row in store.routing_decisions(run_id)]
    assert read == decisions
    assert [RoutingDecision(domain=DOMAIN, **row)
            for row in store.routing_decisions(run_id, stage=1)] == decisions[40:80]
    assert [RoutingDecision(domain=DOMAIN, **row)
            for row in store.routing_decisions(run_id, query_id="q00007")] == [decisions[7]]
    assert list(store.routing_decisions(run_id, query_id="q00007", stage=0)) != []
    assert list(store.routing_decisions(run_id, query_id="q00007", stage=1)) == []

    assert [DeploymentDecision(domain=DOMAIN, **row)
            for row in store.deployment_decisions(run_id)] == sorted(deployments,
                                                                     key=lambda d: d.seq)

    entries = list(store.journal(run_id))
    assert [seq for seq, _ in entries] == list(range(n))
    expected = {row["seq"]: row for row in journal}
    for seq, event in entries:
        assert event["type"] == expected[seq]["event_type"]
        assert decode_event(event) == decode_event(expected[seq]["event"])
    assert [seq for seq, _ in store.journal(run_id, from_seq=n - 3)] == [n - 3, n - 2, n - 1]

    # The letter without seq was in both batches and, with no tracking rows to gate the
    # second one, is stored twice: such letters need tracking rows for idempotency.
    letters = store.dead_letters(run_id)
    assert [(d["seq"], d["reason"]) for d in letters] == [
        (3, "unknown_model"), (7, "duplicate_query"), (None, "malformed"), (None, "malformed")]
    assert DeadLetter(domain=DOMAIN, **{k: v for k, v in letters[0].items()
                                        if k != "created_at"}) == dead[2]


def test_snapshots(store: AuditStore, new_run: Callable[..., str]) -> None:
    run_id = new_run()
    assert store.latest_snapshot(run_id) is None
    assert store.save_snapshot(run_id, 10, b"\x00state-10\xff")
    assert store.save_snapshot(run_id, 30, b"state-30")
    assert store.save_snapshot(run_id, 20, b"state-20")
    assert not store.save_snapshot(run_id, 30, b"state-30")
    assert store.latest_snapshot(run_id) == (30, b"state-30")
    assert store.latest_snapshot(new_run()) is None


def test_run_lifecycle(store: AuditStore, new_run: Callable[..., str]) -> None:
    first = new_run("backtest")
    second = new_run("live", seed=2**62)
    runs = store.list_runs()
    assert [r["run_id"] for r in runs] == [second, first]  # newest first
    run = store.get_run(second)
    assert run is not None
    assert (run["kind"], run["seed"], run["status"], run["domain"], run["policy"]) == (
        "live", 2**62, "running", DOMAIN, "stageroute")
    assert run["config"]["seed"] == 2**62
    assert run["finished_at"] is None and run["summary"] is None

    store.finish_run(second, {"routed": 10, "reward": 0.5})
    run = store.get_run(second)
    assert run is not None
    assert run["status"] == "finished" and run["finished_at"] >= run["created_at"]
    assert run["summary"] == {"routed": 10, "reward": 0.5}

    assert store.get_run("00000000-0000-4000-8000-000000000000") is None
    with pytest.raises(LookupError):
        store.finish_run("00000000-0000-4000-8000-000000000000", {})
    with pytest.raises(ValueError, match="run kind"):
        store.create_run("replay", {}, 0, DOMAIN, "stageroute")
    with pytest.raises(ValueError, match="not a run id"):
        store.get_run("not-a-uuid")


# --- exact floats -------------------------------------------------------------------------

EDGE_FLOATS = [0.1 + 0.2, 1e-300, 5e-324]


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


@pytest.mark.parametrize("n", SIZES)
def test_floats_are_bit_exact_through_double_precision_and_jsonb(
    store: AuditStore, new_run: Callable[..., str], n: int
) -> None:
    run_id = store.create_run("backtest", {"budget": EDGE_FLOATS}, 0, DOMAIN, "stageroute")
    rows = []
    for i in range(n):
        x = EDGE_FLOATS[i % 3]
        rows.append({**routing_decision(i).model_dump(), "time": x, "budget": x, "draw": x,
                     "mu_u": [x, EDGE_FLOATS[(i + 1) % 3]], "c_l": EDGE_FLOATS[1:]})
    journal: list[dict[str, Any]] = [{"seq": i, "event_type": "feedback",
                "event": Feedback(time=EDGE_FLOATS[i % 3], query_id="q", model_id="m",
                                  reward=EDGE_FLOATS[(i + 1) % 3],
                                  cost=EDGE_FLOATS[(i + 2) % 3]).model_dump(mode="json")}
               for i in range(n)]
    store.write_batch(run_id, journal, rows, [], [], [])
    store.finish_run(run_id, {"mean_reward": EDGE_FLOATS})

    for written, read in zip(rows, store.routing_decisions(run_id), strict=True):
        for key in ("time", "budget", "draw"):
            assert bits(read[key]) == bits(written[key])
        for key in ("mu_u", "c_l"):
            assert [bits(v) for v in read[key]] == [bits(v) for v in written[key]]
    for (_, event), written in zip(store.journal(run_id), journal, strict=True):
        for key in ("time", "reward", "cost"):
            assert bits(event[key]) == bits(written["event"][key])
    run = store.get_run(run_id)
    assert run is not None
    assert [bits(v) for v in run["config"]["budget"]] == [bits(v) for v in EDGE_FLOATS]
    assert [bits(v) for v in run["summary"]["mean_reward"]] == [bits(v) for v in EDGE_FLOATS]


def test_jsonb_limits_on_floats(store: AuditStore, new_run: Callable[..., str]) -> None:
    """Documented JSONB behaviour: numbers are decimals printed without an exponent, so a float
    >= 1e16 reads back as an int of the same value, and -0.0 reads back as 0.0 (equal, but
    not the same bits). The contract's lists hold probabilities and USD costs, far below 1e16;
    double precision columns keep both exactly."""
    run_id = new_run()
    row = {**routing_decision(0).model_dump(), "mu_u": [1e300, -0.0], "budget": -0.0,
           "time": 1e300}
    store.write_batch(run_id, [], [row], [], [], [])
    (read,) = store.routing_decisions(run_id)
    assert read["mu_u"] == [10**300, 0.0] and float(read["mu_u"][0]) == 1e300
    assert bits(read["mu_u"][1]) == bits(0.0)
    assert bits(read["budget"]) == bits(-0.0) and read["time"] == 1e300

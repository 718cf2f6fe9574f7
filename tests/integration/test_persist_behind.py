"""Decide from the log, persist behind: real broker, real PostgreSQL.

* A worker that crashes after its decisions are on the topic and before they are stored
  (``STAGEROUTE_CRASH_AT=acked:3``, deterministic): after a restart every decision it had
  published is in the audit trail, and the stored row, encoded as the decision the worker
  re-sends from it, is byte-identical to the published message.
* The trail's lag bound, driven step by step in one process: while PostgreSQL holds a row lock
  the checkpoint's transaction waits on, the checkpoint publishes up to the bound (records,
  then seconds) and applies nothing more; once the lock goes, everything is stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import pool, text

from schemas import encode
from streams.audit.db import make_engine
from streams.audit.store import AuditStore
from streams.live.checkpoint import CRASH_EXIT, Checkpoint, OutputProducer
from streams.live.health import Health, Metrics
from streams.live.processor import Message, Processor, live_run_id, worker_run_id
from tests.integration.livekit import RUNTIMES, check_domain, wait_for, wait_stored
from tests.synthetic import default_config, synthetic_log

pytestmark = pytest.mark.integration

DOMAIN = "default"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_crash_between_publishing_and_storing_leaves_the_published_decision_stored(
        stream_env_factory: Any, runtime: str) -> None:
    env = stream_env_factory()
    log = synthetic_log(400, env.config, domain=DOMAIN)
    env.publish(log)
    options = ("--batch-size", "30")
    doomed = env.start_worker(runtime, *options, env={"STAGEROUTE_CRASH_AT": "acked:3"},
                              wait=False)
    wait_for(lambda: not doomed.alive(), 90, "the crash", [doomed])
    assert doomed.proc.returncode == CRASH_EXIT, doomed.log_tail()

    published = {}
    for record in env.read(env.names.routing_decisions):
        doc = json.loads(record.value)
        if doc["type"] == "routing_decision":
            published[doc["seq"]] = record.value
    with env.store() as store:
        stored_at_crash = {row["seq"] for row in store.routing_decisions(env.run_id(DOMAIN))}
    unstored = set(published) - stored_at_crash
    assert unstored, "the crash came after publishing and before storing"

    worker = env.start_worker(runtime, *options)
    wait_stored(env, {DOMAIN: log}, 90, [worker])
    assert worker.stop() == 0
    check_domain(env, DOMAIN, log)
    with env.store() as store:
        processor = Processor(store, env.run_name, env.config, Metrics())
        tp = (env.names.events, 0)
        resent = processor._stored_outputs(tp, -1, len(log))
    stored = {json.loads(o.value)["seq"]: o.value for o in resent
              if json.loads(o.value)["type"] == "routing_decision"}
    for seq, message in published.items():
        assert stored[seq] == message, f"seq {seq}: stored decision differs from the published"


# --- the lag bound, in one process ------------------------------------------------------------


@contextmanager
def row_locked(db_url: str, worker_run: str) -> Iterator[None]:
    """Hold the lock on the worker run's partition rows (what every batch transaction locks
    first) until the block ends."""
    engine = make_engine(db_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1 FROM live_partitions WHERE run_id = :r FOR UPDATE"),
                     {"r": worker_run})
        try:
            yield
        finally:
            conn.rollback()
    engine.dispose()


def _batches(topic: str, size: int, count: int) -> list[list[Message]]:
    log = synthetic_log(size * count, default_config(), domain=DOMAIN)[:size * count]
    messages = [Message(topic, 0, i, DOMAIN.encode(), encode(e)) for i, e in enumerate(log)]
    return [messages[i:i + size] for i in range(0, len(messages), size)]


async def _lag_bound(env: Any, max_records: int, max_seconds: float) -> dict[str, Any]:
    metrics = Metrics()
    store = AuditStore(env.db_url)
    processor = Processor(store, env.run_name, env.config, metrics)
    checkpoint = Checkpoint(processor, OutputProducer(env.bootstrap, env.names),
                            Health(metrics, 60.0), lambda tps: _none(),
                            max_lag_records=max_records, max_lag_seconds=max_seconds)
    tp = (env.names.events, 0)
    batches = _batches(tp[0], 30, 4)
    seen: dict[str, Any] = {}
    try:
        await checkpoint.on_assigned([tp])
        await checkpoint.process(batches[0])  # the domain's run is created and loaded
        await checkpoint.drain()
        with row_locked(env.db_url, worker_run_id(env.run_name)):
            first = await checkpoint.process(batches[1])
            if max_seconds < 10:  # let the second batch pass the age bound
                await asyncio.sleep(max_seconds * 1.5)
            second = asyncio.ensure_future(checkpoint.process(batches[2]))
            third = asyncio.ensure_future(checkpoint.process(batches[3]))
            await asyncio.sleep(1.0)
            seen["pending"] = checkpoint.pending_records
            seen["applied"] = processor.positions[tp]
            seen["blocked"] = [not f.done() for f in (second, third)]
            seen["first_stored"] = first.done()
            seen["pauses"] = metrics.lag_pauses._value.get()
        await asyncio.gather(second, third)
        await checkpoint.drain()
        seen["after"] = processor.positions[tp]
    finally:
        await checkpoint.close()
        store.close()
    return seen


async def _none() -> dict[Any, int]:
    return {}


def test_past_the_record_bound_the_checkpoint_applies_nothing_until_the_trail_catches_up(
        stream_env_factory: Any) -> None:
    env = stream_env_factory()
    seen = asyncio.run(_lag_bound(env, max_records=45, max_seconds=60.0))
    # 30 records pending (the second batch); 30 more would pass 45: the third waits.
    assert seen["pending"] == 30 and seen["applied"] == 59
    assert seen["blocked"] == [True, True] and not seen["first_stored"]
    assert seen["pauses"] >= 1
    assert seen["after"] == 119
    check_stored(env, 120)


def test_past_the_age_bound_the_checkpoint_applies_nothing_until_the_trail_catches_up(
        stream_env_factory: Any) -> None:
    env = stream_env_factory()
    seen = asyncio.run(_lag_bound(env, max_records=10_000, max_seconds=0.4))
    # The second batch is older than 0.4 s and unstored: the third and fourth wait.
    assert seen["pending"] == 30 and seen["applied"] == 59
    assert seen["blocked"] == [True, True] and not seen["first_stored"]
    assert seen["after"] == 119
    check_stored(env, 120)


def check_stored(env: Any, events: int) -> None:
    with env.store() as store:
        journal = list(store.journal(live_run_id(env.run_name, DOMAIN)))
    assert [seq for seq, _ in journal] == list(range(events))

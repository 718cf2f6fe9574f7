"""The commit protocol's crash points and the owner's fence, deterministically.

* A failure injected at each step of the protocol (``STAGEROUTE_CRASH_AT``: after applying,
  after publishing, after the transaction, after the broker's acks), in a real worker process
  on the real broker and PostgreSQL, both runtimes; a restart then loses and doubles nothing.
* The fence, driven step by step with two processors on one database: a worker that lost its
  partition writes nothing, and a collision is an error, never a silent no-op.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from schemas import encode
from streams.audit.store import AuditStore
from streams.live.checkpoint import CRASH_EXIT
from streams.live.health import Metrics
from streams.live.processor import Message, Processor, live_run_id
from tests.integration.livekit import (
    RUNTIMES,
    check_domain,
    check_topic,
    wait_for,
    wait_stored,
)
from tests.synthetic import default_config, synthetic_log

pytestmark = pytest.mark.integration

DOMAIN = "default"
POINTS = ("applied", "published", "persisted", "acked")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("point", POINTS)
def test_a_crash_at_each_step_of_the_commit_protocol_loses_and_doubles_nothing(
        stream_env_factory: Any, runtime: str, point: str) -> None:
    env = stream_env_factory()
    log = synthetic_log(300, env.config, domain=DOMAIN)
    queries = sum(1 for e in log if e.type == "query")
    env.publish(log)
    options = ("--batch-size", "40")
    doomed = env.start_worker(runtime, *options, env={"STAGEROUTE_CRASH_AT": f"{point}:3"},
                              wait=False)
    wait_for(lambda: not doomed.alive(), 90, f"the crash at {point}", [doomed])
    assert doomed.proc.returncode == CRASH_EXIT, doomed.log_tail()
    assert "fault injection" in doomed.log.read_text()
    stored = env.count("routing_decisions", [env.run_id(DOMAIN)])
    # Batches 1-2 committed (40 records each), batch 3 only from "persisted" on.
    assert stored < queries

    restarted = env.start_worker(runtime, *options)
    wait_stored(env, {DOMAIN: log}, 90, [restarted])
    assert restarted.stop() == 0
    check_domain(env, DOMAIN, log)
    check_topic(env, {DOMAIN: log})


def _messages(domain: str = DOMAIN, n: int = 120) -> list[Message]:
    log = synthetic_log(n, default_config(), domain=domain)
    return [Message("in.events", 0, i, domain.encode(), encode(e)) for i, e in enumerate(log)]


def test_a_worker_that_lost_its_partition_writes_nothing(migrated_db: str) -> None:
    config = default_config()
    messages = _messages()
    tp = ("in.events", 0)
    with AuditStore(migrated_db) as store:
        zombie = Processor(store, "fenced", config, Metrics())
        zombie.assign([tp], {})
        zombie.commit(zombie.prepare(messages[:50]))
        late = zombie.prepare(messages[50:80])  # applied, not yet stored ...

        owner = Processor(store, "fenced", config, Metrics())  # ... when another claims it
        owner.assign([tp], {})
        assert zombie.commit(late) == {0}, "the zombie finds itself fenced"
        assert zombie.runs == {} and zombie.epochs == {}, "and drops the partition's state"
        run_id = live_run_id("fenced", DOMAIN)
        assert store.row_counts(run_id)["event_journal"] == 50, "nothing of it was written"

        owner.commit(owner.prepare(messages))  # the owner resumes from what is stored
        assert owner.metrics.skipped._value.get() == 50
        assert store.row_counts(run_id)["event_journal"] == len(messages)
        # Whatever the zombie does next, it cannot write: it owns no partition.
        assert zombie.prepare(messages[80:]).writes == {}


def test_a_collision_under_the_fence_is_an_error_not_a_no_op(migrated_db: str) -> None:
    config = default_config()
    messages = _messages()
    with AuditStore(migrated_db) as store:
        worker = Processor(store, "collide", config, Metrics())
        worker.assign([("in.events", 0)], {})
        worker.commit(worker.prepare(messages[:30]))
        batch = worker.prepare(messages[30:60])
        # Someone wrote a journal entry at a seq this batch also writes.
        run_id = live_run_id("collide", DOMAIN)
        store.write_batch(run_id, journal=[batch.writes[run_id].journal[0]], routing=[],
                          deployments=[], dead_letters=[], models=[])
        with pytest.raises(IntegrityError):
            worker.commit(batch)
        assert store.row_counts(run_id)["event_journal"] == 31

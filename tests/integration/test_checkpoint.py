"""The commit protocol's crash points and the owner's fence, deterministically.

* A failure injected at each step of the protocol (``STAGEROUTE_CRASH_AT``: after applying,
  after publishing, after the broker's acks, after the transaction), in a real worker process
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
POINTS = ("applied", "published", "acked", "persisted")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_crash_at_each_step_of_the_commit_protocol_loses_and_doubles_nothing(
        stream_env_factory: Any, runtime: str) -> None:
    """One worker after another, each crashing at the next step of the protocol in its third
    batch (the restart resumes what the crash left); then one that finishes the log."""
    env = stream_env_factory()
    log = synthetic_log(300, env.config, domain=DOMAIN)
    queries = sum(1 for e in log if e.type == "query")
    env.publish(log)
    options = ("--batch-size", "30")
    stored = 0
    for point in POINTS:
        doomed = env.start_worker(runtime, *options,
                                  env={"STAGEROUTE_CRASH_AT": f"{point}:3"}, wait=False)
        wait_for(lambda w=doomed: not w.alive(), 90, f"the crash at {point}", [doomed])
        assert doomed.proc.returncode == CRASH_EXIT, doomed.log_tail()
        assert f"exiting at {point} of batch 3" in doomed.log.read_text()
        now = env.count("routing_decisions", [env.run_id(DOMAIN)])
        assert stored <= now < queries, f"{point}: the crash came mid-stream"
        stored = now

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


def test_a_domain_seen_on_another_partition_is_a_dead_letter_not_a_second_writer(
        migrated_db: str) -> None:
    config = default_config()
    messages = _messages(n=30)
    stray = Message("in.events", 1, 0, DOMAIN.encode(), messages[-1].value)
    with AuditStore(migrated_db) as store:
        worker = Processor(store, "stray", config, Metrics())
        worker.assign([("in.events", 0), ("in.events", 1)], {})
        batch = worker.prepare([*messages[:-1], stray])
        worker.commit(batch)
        letters = store.dead_letters(live_run_id("stray", ""))
        assert [d["reason"] for d in letters] == ["key_mismatch"]
        assert "consumed from partition 0, not 1" in letters[0]["detail"]
        assert store.row_counts(live_run_id("stray", DOMAIN))["event_journal"] == \
            len(messages) - 1

"""The live worker against a real Kafka broker and a real PostgreSQL: no mocks.

Each test gets its own topic prefix and database; workers run as subprocesses
(``stageroute worker``), exactly as a user starts them, with both runtimes (faust agent, plain
aiokafka loop). Logs are built by running the engine (``tests.synthetic``), published to the
single ordered topic ``<prefix>.events``.

* every query gets exactly one decision row and one decision message; ``verify`` is clean;
* the live decisions equal the embedded engine's fold of the same log, query for query;
* SIGKILL mid-stream + restart: nothing lost, nothing doubled, final state = one-pass fold.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from stageroute.engine import EngineConfig, snapshot
from streams.live.processor import load_state
from tests.integration.livekit import (
    RUNTIMES,
    check_domain,
    check_topic,
    decisions_on_topic,
    embedded,
    wait_for,
    wait_stored,
)
from tests.synthetic import synthetic_log

pytestmark = pytest.mark.integration

DOMAIN = "default"
BAD_MESSAGES = (b"not json at all", b'{"type": "query"}',
                b'{"type": "feedback", "query_id": "x", "model_id": "m", "reward": 2.0, '
                b'"cost": 0.1, "time": 1.0}')


def _state_doc(state: Any) -> dict[str, Any]:
    return dict(json.loads(zlib.decompress(snapshot(state))))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_live_run_decides_each_query_once_verifies_and_equals_the_embedded_engine(
        stream_env_factory: Any, runtime: str) -> None:
    env = stream_env_factory()
    log = synthetic_log(2600, env.config, domain=DOMAIN)
    assert len(log) >= 5000
    worker = env.start_worker(runtime)
    half = len(log) // 2
    env.publish([*log[:half], *((DOMAIN.encode(), raw) for raw in BAD_MESSAGES), *log[half:]])
    queries = sum(1 for e in log if e.type == "query")
    wait_stored(env, {DOMAIN: log}, 90, [worker])
    worker_run = [env.run_id("")]
    wait_for(lambda: env.count("dead_letters", worker_run) >= len(BAD_MESSAGES), 30,
             "the dead letters", [worker])
    metrics = worker.metrics()
    assert worker.stop() == 0

    check_domain(env, DOMAIN, log)
    published = decisions_on_topic(env)
    assert sum(len(copies) for copies in published.values()) == queries, \
        "each decision exactly once on the topic when nothing failed"
    check_topic(env, {DOMAIN: log})
    with env.store() as store:
        reasons = sorted(d["reason"] for d in store.dead_letters(env.run_id("")))
        assert reasons == ["malformed", "reward_out_of_range", "schema_mismatch"]
        assert store.dead_letters(env.run_id(DOMAIN)) == []
    assert metrics["events_processed_total"] == len(log)
    assert metrics["dead_letters_total"] == len(BAD_MESSAGES)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(
        stream_env_factory: Any, runtime: str) -> None:
    env = stream_env_factory()
    log = synthetic_log(1500, env.config, domain=DOMAIN)
    queries = sum(1 for e in log if e.type == "query")
    runs = [env.run_id(DOMAIN)]
    env.publish(log)
    # Small batches and frequent snapshots: many commits to kill between, and the restart
    # goes through snapshot + journal replay.
    options = ("--batch-size", "50", "--snapshot-every", "400")
    first = env.start_worker(runtime, *options)
    wait_for(lambda: env.count("routing_decisions", runs) >= queries // 3, 90,
             "a third of the decisions", [first])
    first.kill()
    at_kill = env.count("routing_decisions", runs)
    assert at_kill < queries, "killed too late to be mid-stream"

    second = env.start_worker(runtime, *options)
    wait_stored(env, {DOMAIN: log}, 120, [second])
    after = second.metrics()
    assert second.stop() == 0
    print(f"{runtime}: killed at {at_kill}/{queries} decisions; after restart: {after}")

    check_domain(env, DOMAIN, log)
    check_topic(env, {DOMAIN: log})
    with env.store() as store:
        run_id = env.run_id(DOMAIN)
        counts = store.row_counts(run_id)
        assert 1 <= counts["snapshots"] <= 2, "old snapshots are pruned"
        config = EngineConfig.model_validate(store.get_run(run_id)["config"])  # type: ignore[index]
        state, _ = embedded(env.config, DOMAIN, log)
        # Statistics continued where they stopped: the state the database holds is the
        # one-pass fold's, counters and per-model statistics included.
        assert _state_doc(load_state(store, run_id, config)) == _state_doc(state)

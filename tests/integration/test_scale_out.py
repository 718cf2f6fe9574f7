"""Scale-out under failures: several workers of one run in one consumer group, real broker,
real PostgreSQL, both runtimes.

Three workers share four partitions of ``<prefix>.events`` carrying eight domains. While the
log streams in, one worker is SIGKILLed, one is SIGSTOPped past its session timeout and then
SIGCONTinued (a zombie that wakes up still believing it owns its partitions), and a new worker
joins. Partitions move several times. Afterwards every domain's audit trail must be exactly the
single-worker fold of its events (journal, one decision row per query, ``verify`` clean), and
the decisions topic must carry each decision, every copy byte-identical.
"""

from __future__ import annotations

import threading
import time
from itertools import zip_longest
from typing import Any

import pytest

from schemas import Event
from tests.integration.livekit import (
    RUNTIMES,
    check_domain,
    check_topic,
    wait_for,
    wait_stored,
)
from tests.synthetic import synthetic_log

pytestmark = pytest.mark.integration

SESSION_TIMEOUT = 6.0  # what livekit starts workers with


def interleave(logs: dict[str, list[Event]]) -> list[Event]:
    return [e for group in zip_longest(*logs.values()) for e in group if e is not None]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_three_workers_survive_a_kill_a_zombie_and_a_join(stream_env_factory: Any,
                                                          runtime: str) -> None:
    env = stream_env_factory(partitions=4)
    logs = {f"d{i}": synthetic_log(220, env.config, domain=f"d{i}", seed=i) for i in range(8)}
    events = interleave(logs)
    queries = sum(1 for e in events if e.type == "query")
    runs = [env.run_id(d) for d in logs]
    options = ("--batch-size", "64", "--snapshot-every", "300")
    workers = [env.start_worker(runtime, *options) for _ in range(3)]

    sent = threading.Event()
    publisher = threading.Thread(
        target=lambda: (env.publish(events, pace=28.0 / len(events)), sent.set()), daemon=True)
    publisher.start()

    def decided() -> int:
        return env.count("routing_decisions", runs)

    wait_for(lambda: decided() >= queries // 6, 120, "a sixth of the decisions", workers)
    workers[0].kill()
    wait_for(lambda: decided() >= queries // 3, 120, "a third of the decisions", workers[1:])
    zombie = workers[1]
    zombie.pause()
    time.sleep(SESSION_TIMEOUT + 4)  # its partitions move to the others
    zombie.resume()
    wait_for(lambda: decided() >= queries // 2, 120, "half of the decisions", workers[1:])
    workers.append(env.start_worker(runtime, *options))
    publisher.join(timeout=120)
    assert sent.is_set(), "the publisher did not finish"
    wait_stored(env, logs, 180, workers[1:])
    time.sleep(2)  # anything a zombie might still write would land now
    fenced = sum(w.metrics().get("fenced_partitions_total", 0) for w in workers[1:])
    for worker in workers[1:]:
        assert worker.alive(), worker.log_tail()
        assert worker.stop() == 0, worker.log_tail()
    print(f"{runtime}: {queries} queries over {len(logs)} domains; fenced partitions: {fenced}")

    for domain, log in logs.items():
        check_domain(env, domain, log)
    check_topic(env, logs)

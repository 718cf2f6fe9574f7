"""Outages without a supervisor: PostgreSQL stopped for 15 s, then the broker restarted, while
a worker processes a stream (both runtimes). The worker process stays up, /health reports
``degraded`` naming the service and then ``ok`` again, the log does not flood, and the run loses
and doubles nothing."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import pytest

from tests.integration.livekit import (
    REPO_ROOT,
    RUNTIMES,
    Worker,
    check_domain,
    check_topic,
    wait_for,
    wait_stored,
)
from tests.integration.test_scale_out import interleave
from tests.synthetic import synthetic_log

pytestmark = pytest.mark.integration


def _infra(script: str, action: str) -> None:
    done = subprocess.run([str(REPO_ROOT / "infra" / script), action], capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr


class HealthWatch(threading.Thread):
    """Polls /health; keeps every (status, reasons) seen."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.seen: list[tuple[int, str, tuple[str, ...]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            status, body = self.worker.health()
            self.seen.append((status, body.get("status", ""), tuple(body.get("reasons", {}))))
            time.sleep(0.2)

    def degraded_for(self, service: str) -> bool:
        return any(s == 503 and st == "degraded" and service in r for s, st, r in self.seen)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_worker_rides_out_a_database_outage_and_a_broker_restart(
        stream_env_factory: Any, runtime: str) -> None:
    env = stream_env_factory(partitions=2)
    logs = {d: synthetic_log(700, env.config, domain=d, seed=i)
            for i, d in enumerate(("eu", "us"))}
    events = interleave(logs)
    queries = sum(1 for e in events if e.type == "query")
    runs = [env.run_id(d) for d in logs]
    worker = env.start_worker(runtime, "--batch-size", "100", "--stall-after", "10")
    watch = HealthWatch(worker)
    watch.start()
    # The first part streams in across the database outage; the rest is published once the
    # broker is back (a producer that lived through the restart could lose records on its
    # side, which is not what this test is about).
    cut = int(len(events) * 0.6)
    publisher = threading.Thread(target=lambda: env.publish(events[:cut], pace=20.0 / cut),
                                 daemon=True)
    publisher.start()

    def decided() -> int:
        return env.count("routing_decisions", runs)

    wait_for(lambda: decided() >= queries // 5, 120, "a fifth of the decisions", [worker])
    _infra("postgres.sh", "stop")
    stopped = time.monotonic()
    wait_for(lambda: watch.degraded_for("database"), 15, "/health degraded (database)",
             [worker])
    time.sleep(max(0.0, 15 - (time.monotonic() - stopped)))
    assert worker.alive(), worker.log_tail()
    _infra("postgres.sh", "start")
    wait_for(worker.healthy, 60, "/health ok after the database came back", [worker])
    at_restart = decided()

    _infra("kafka.sh", "stop")
    wait_for(lambda: watch.degraded_for("broker"), 20, "/health degraded (broker)", [worker])
    assert worker.alive(), worker.log_tail()
    _infra("kafka.sh", "start")
    wait_for(worker.healthy, 90, "/health ok after the broker came back", [worker])
    publisher.join(timeout=60)
    assert not publisher.is_alive()
    env.publish(events[cut:])
    wait_stored(env, logs, 180, [worker])
    watch.done.set()
    assert worker.alive(), worker.log_tail()
    metrics = worker.metrics()
    assert worker.stop() == 0
    print(f"{runtime}: decisions at the broker restart {at_restart}/{queries}; "
          f"retries {metrics}; log {worker.log.stat().st_size} bytes")

    assert worker.log.stat().st_size < 400_000, "a few lines per outage, not a flood"
    for domain, log in logs.items():
        check_domain(env, domain, log)
    check_topic(env, logs)


"""The live worker against a real Kafka broker and a real PostgreSQL: no mocks.

Each test gets its own topic prefix and database; the worker runs as a subprocess
(``stageroute worker``), exactly as a user starts it, with both runtimes (faust agent, plain
aiokafka loop). Logs are built by running the engine (``tests.synthetic``), published
to the single ordered topic ``<prefix>.events``.

* every query gets exactly one decision row and one decision message; ``verify`` is clean;
* the live decisions equal the embedded engine's fold of the same log, query for query;
* SIGKILL mid-stream + restart: nothing lost, nothing doubled, final state = one-pass fold.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import pool, text

from schemas import Event, RoutingDecision, encode
from stageroute.engine import EngineConfig, fold, initial_state, snapshot
from stageroute.verify import verify
from streams import topics
from streams.audit.store import AuditStore
from streams.live.processor import live_run_id, load_state
from streams.publisher import make_producer
from tests.synthetic import default_config, synthetic_log

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "default"
RUNTIMES = ("faust", "aiokafka")
BAD_MESSAGES = (b"not json at all", b'{"type": "query"}',
                b'{"type": "feedback", "query_id": "x", "model_id": "m", "reward": 2.0, '
                b'"cost": 0.1, "time": 1.0}')


# --- helpers ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str,
              worker: Worker | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if worker is not None and worker.proc.poll() is not None:
            pytest.fail(f"worker exited ({worker.proc.returncode}) while waiting for {what}:\n"
                        f"{worker.log_tail()}")
        time.sleep(0.02)
    tail = worker.log_tail() if worker is not None else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tail}")


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


@dataclass
class StreamEnv:
    """One test's broker topics, database, engine config and workers."""

    bootstrap: str
    db_url: str
    names: topics.TopicNames
    config: EngineConfig
    workdir: Path
    run_name: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    workers: list[Worker] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return live_run_id(self.run_name, DOMAIN)

    def start_worker(self, runtime: str, *extra: str) -> Worker:
        config_path = self.workdir / "engine.json"
        config_path.write_text(self.config.model_dump_json())
        port = _free_port()
        log = self.workdir / f"worker-{len(self.workers)}.log"
        # This checkout, whatever else is installed.
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--engine-config",
             str(config_path), "--run-id", self.run_name, "--bootstrap", self.bootstrap,
             "--db-url", self.db_url, "--topic-prefix", self.names.prefix, "--web-port",
             str(port), "--runtime", runtime, "--session-timeout", "6",
             "--group", f"g-{self.names.prefix}", "--log-level", "warning", *extra],
            cwd=self.workdir, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        worker = Worker(proc, port, log)
        self.workers.append(worker)
        _wait_for(worker.healthy, 60, "the worker's /health", worker)
        return worker

    def publish(self, log: list[Event], bad_at: int | None = None) -> None:
        producer = make_producer(self.bootstrap)
        try:
            for i, event in enumerate(log):
                if i == bad_at:
                    for raw in BAD_MESSAGES:
                        producer.send(self.names.events, key=DOMAIN.encode(), value=raw)
                producer.send(self.names.events, key=event.domain.encode(),
                              value=encode(event))
            producer.flush()
        finally:
            producer.close()

    def committed(self, table: str = "routing_decisions") -> int:
        with AuditStore(self.db_url, poolclass=pool.NullPool) as store, \
                store.engine.connect() as conn:
            return int(conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE run_id = :r"),
                {"r": self.run_id}).scalar_one())

    def decision_messages(self, expected: int, idle: float = 1.5) -> Counter[str]:
        """Routing decisions on the output topic, counted by query id: read from the start
        until ``expected`` distinct queries were seen and nothing more came for ``idle`` s."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(self.names.routing_decisions, bootstrap_servers=self.bootstrap,
                                 group_id=None, auto_offset_reset="earliest",
                                 enable_auto_commit=False)
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        last = time.monotonic()
        try:
            while time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        doc = json.loads(record.value)
                        if doc["type"] == "routing_decision":
                            counts[doc["query_id"]] += 1
                    last = time.monotonic()
                if len(counts) >= expected and time.monotonic() - last > idle:
                    break
        finally:
            consumer.close()
        return counts


@pytest.fixture
def stream_env(kafka_bootstrap: str, migrated_db: str, tmp_path: Path) -> Iterator[StreamEnv]:
    names = topics.TopicNames(f"t{uuid.uuid4().hex[:10]}")
    topics.create_topics(kafka_bootstrap, topics.specs(1, 1, names))
    env = StreamEnv(kafka_bootstrap, migrated_db, names, default_config(), tmp_path)
    try:
        yield env
    finally:
        for worker in env.workers:
            worker.stop()
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics(list(names.all))
        finally:
            admin.close()


def _embedded(config: EngineConfig, log: list[Event]) -> tuple[Any, dict[str, RoutingDecision]]:
    state, outputs = fold(initial_state(config.model_copy(update={"domain": DOMAIN})), log)
    return state, {o.query_id: o for o in outputs if isinstance(o, RoutingDecision)}


def _state_doc(state: Any) -> dict[str, Any]:
    return dict(json.loads(zlib.decompress(snapshot(state))))


def _counters(metrics: str) -> dict[str, float]:
    return {name.removeprefix("stageroute_"): float(value)
            for name, value in (line.split() for line in metrics.splitlines()
                                if line.startswith("stageroute_") and "{" not in line)}


def _stored(env: StreamEnv) -> tuple[AuditStore, dict[str, Any]]:
    store = AuditStore(env.db_url, poolclass=pool.NullPool)
    run = store.get_run(env.run_id)
    assert run is not None and run["kind"] == "live"
    return store, run


# --- must-hold 1 and 2 ------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_live_run_decides_each_query_once_verifies_and_equals_the_embedded_engine(
        stream_env: StreamEnv, runtime: str) -> None:
    env = stream_env
    log = synthetic_log(2600, env.config, domain=DOMAIN)
    assert len(log) >= 5000
    queries = [e.query_id for e in log if e.type == "query"]
    worker = env.start_worker(runtime)
    env.publish(log, bad_at=len(log) // 2)

    _wait_for(lambda: env.committed() >= len(queries), 90, "every decision", worker)
    _wait_for(lambda: env.committed("dead_letters") >= len(BAD_MESSAGES), 30,
              "the dead letters", worker)
    metrics = worker.metrics()
    worker.stop()

    # 1. exactly one decision row and one decision message per query; verify is clean.
    store, run = _stored(env)
    with store:
        rows = list(store.routing_decisions(env.run_id))
        assert Counter(r["query_id"] for r in rows) == Counter(queries)
        messages = env.decision_messages(len(queries))
        assert messages == Counter(queries), "each query exactly once on the decisions topic"
        config = EngineConfig.model_validate(run["config"])
        report = verify(config, store.journal(env.run_id), store.routing_decisions(env.run_id),
                        store.deployment_decisions(env.run_id))
        assert report.mismatches == []
        assert report.routing_checked == len(queries)
        assert report.events_replayed == len(log)
        latest = store.latest_snapshot(env.run_id)
        assert latest is not None and latest[0] == len(log), "SIGTERM snapshots the state"
        reasons = sorted(d["reason"] for d in store.dead_letters(env.run_id))
        assert reasons == ["malformed", "reward_out_of_range", "schema_mismatch"]
        assert "stageroute_events_processed_total" in metrics

        # 2. one ordered partition: the live decisions are the embedded engine's.
        _, embedded = _embedded(env.config, log)
        assert embedded.keys() == {r["query_id"] for r in rows}
        for row in rows:
            want = embedded[row["query_id"]]
            assert (row["p"], row["model_id"], row["draw"], row["deployed"]) == \
                (want.p, want.model_id, want.draw, want.deployed), row["query_id"]


# --- must-hold 3 ------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sigkill_mid_stream_then_restart_loses_and_doubles_nothing(
        stream_env: StreamEnv, runtime: str) -> None:
    env = stream_env
    log = synthetic_log(3000, env.config, domain=DOMAIN)
    queries = [e.query_id for e in log if e.type == "query"]
    env.publish(log)
    # Small batches and frequent snapshots: many commits to kill between, and the restart
    # goes through snapshot + journal replay.
    options = ("--batch-size", "50", "--snapshot-every", "700")
    first = env.start_worker(runtime, *options)
    _wait_for(lambda: env.committed() >= len(queries) // 3, 90, "a third of the decisions",
              first)
    first.kill()
    at_kill = env.committed()
    assert at_kill < len(queries), "killed too late to be mid-stream"

    second = env.start_worker(runtime, *options)
    _wait_for(lambda: env.committed() >= len(queries), 120, "every decision after restart",
              second)
    after = _counters(second.metrics())
    second.stop()
    print(f"{runtime}: killed at {at_kill}/{len(queries)} decisions; after restart: {after}")

    store, run = _stored(env)
    with store:
        rows = list(store.routing_decisions(env.run_id))
        assert Counter(r["query_id"] for r in rows) == Counter(queries), \
            "no decision lost, none doubled in the table"
        counts = store.row_counts(env.run_id)
        assert counts["event_journal"] == len(log)
        assert counts["snapshots"] >= 2

        config = EngineConfig.model_validate(run["config"])
        report = verify(config, store.journal(env.run_id), store.routing_decisions(env.run_id),
                        store.deployment_decisions(env.run_id))
        assert report.mismatches == []

        state, embedded = _embedded(env.config, log)
        for row in rows:
            want = embedded[row["query_id"]]
            assert (row["p"], row["model_id"], row["draw"]) == (want.p, want.model_id,
                                                                 want.draw)
        # Statistics continued where they stopped: the state the database holds is the
        # one-pass fold's, counters and per-model statistics included.
        assert _state_doc(load_state(store, env.run_id, config)) == _state_doc(state)

    # The output topic: every decision at least once; re-sent ones are only those the topic
    # lacked, so none twice.
    messages = env.decision_messages(len(queries))
    assert set(messages) == set(queries)
    assert [q for q, n in messages.items() if n > 1] == []



# --- the crash windows, deterministically (Postgres only) -------------------------------------


def test_redelivered_records_are_skipped_and_unsent_decisions_resent(migrated_db: str) -> None:
    """A crash after the commit, before the outputs were sent: the restarted processor skips
    the redelivered records and re-sends exactly the decisions the output topic lacks."""
    from streams.live.processor import Message, Processor

    config = default_config()
    log = synthetic_log(400, config, domain=DOMAIN)
    messages = [Message("in.events", 0, i, DOMAIN.encode(), encode(e))
                for i, e in enumerate(log)]
    half = len(messages) // 2
    with AuditStore(migrated_db) as store:
        first = Processor(store, "crashy", config, last_sent=lambda: {})
        sent = first.process(messages[:half])
        seqs = [json.loads(o.value)["seq"] for o in sent if not o.dead]
        last_sent = seqs[len(seqs) // 3]  # the topic got only the first third
        lost = [o.value for o in sent if not o.dead and json.loads(o.value)["seq"] > last_sent]

        restarted = Processor(store, "crashy", config, last_sent=lambda: {DOMAIN: last_sent})
        out = restarted.process(messages)  # the first half is redelivered
        assert restarted.metrics.skipped_redelivered == half
        assert [o.value for o in out[:len(lost)]] == lost
        assert restarted.metrics.resent == len(lost)

        run_id = live_run_id("crashy", DOMAIN)
        state, embedded = _embedded(config, log)
        assert _state_doc(load_state(store, run_id, config)) == _state_doc(state)
        assert {r["query_id"] for r in store.routing_decisions(run_id)} == embedded.keys()


def test_domains_commit_independently_on_a_shared_partition(migrated_db: str) -> None:
    """Two domains interleaved on one partition commit one transaction each; a crash after
    one domain's commit and before the other's loses and doubles nothing in either."""
    from streams.live.processor import Message, Processor

    config = default_config()
    logs = {d: synthetic_log(150, config, domain=d, seed=i) for i, d in enumerate(("eu", "us"))}
    n = min(len(log) for log in logs.values())
    logs = {d: log[:n] for d, log in logs.items()}
    interleaved = [e for pair in zip(logs["eu"], logs["us"]) for e in pair]
    messages = [Message("in.events", 0, i, e.domain.encode(), encode(e))
                for i, e in enumerate(interleaved)]
    cut = len(messages) // 2
    with AuditStore(migrated_db) as store:
        # Before the crash only "eu"'s transaction of the first batch committed.
        Processor(store, "multi", config).process(
            [m for m in messages[:cut] if m.key == b"eu"])
        restarted = Processor(store, "multi", config, last_sent=lambda: {})
        restarted.process(messages)  # everything is redelivered
        assert restarted.metrics.skipped_redelivered == sum(
            1 for m in messages[:cut] if m.key == b"eu")
        for domain, log in logs.items():
            state, embedded = fold(initial_state(config.model_copy(update={"domain": domain})),
                                   log)
            run_id = live_run_id("multi", domain)
            assert _state_doc(load_state(store, run_id, state.config)) == _state_doc(state)
            rows = {r["query_id"]: r for r in store.routing_decisions(run_id)}
            routed = {o.query_id: o for o in embedded if isinstance(o, RoutingDecision)}
            assert rows.keys() == routed.keys()
            assert all(rows[q]["draw"] == routed[q].draw and rows[q]["p"] == routed[q].p
                       for q in rows)

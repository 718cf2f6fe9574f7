"""Helpers of the live-worker tests: workers as subprocesses (``stageroute worker``, exactly as
a user starts them), publishing, and reading back what the database and the topics hold."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import pool, text

from schemas import Event, RoutingDecision, encode
from stageroute.engine import EngineConfig, fold, initial_state
from stageroute.verify import verify
from streams import topics
from streams.audit.store import AuditStore
from streams.live.processor import live_run_id
from streams.publisher import make_producer

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIMES = ("faust", "aiokafka")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             workers: Iterable[Worker] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tails = "\n".join(f"{w.log_tail()}\n/health: {w.health()}" for w in workers)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tails}")


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /health; (0, {}) when nothing answers."""
        url = f"http://127.0.0.1:{self.port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return int(r.status), json.loads(r.read())
        except urllib.error.HTTPError as err:
            return int(err.code), json.loads(err.read())
        except OSError:
            return 0, {}

    def healthy(self) -> bool:
        return self.health()[0] == 200

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            lines = r.read().decode().splitlines()
        return {name.removeprefix("stageroute_"): float(value)
                for name, value in (line.split() for line in lines
                                    if line.startswith("stageroute_") and "{" not in line)}

    def log_tail(self, lines: int = 40) -> str:
        text_ = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.log.name}\n" + "\n".join(text_[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


@dataclass
class StreamEnv:
    """One test's topics, database, engine config and workers."""

    bootstrap: str
    db_url: str
    names: topics.TopicNames
    config: EngineConfig
    workdir: Path
    run_name: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    workers: list[Worker] = field(default_factory=list)

    def run_id(self, domain: str = "default") -> str:
        return live_run_id(self.run_name, domain)

    def start_worker(self, runtime: str, *extra: str, env: dict[str, str] | None = None,
                     wait: bool = True) -> Worker:
        config_path = self.workdir / "engine.json"
        config_path.write_text(self.config.model_dump_json())
        port = free_port()
        log = self.workdir / f"worker-{len(self.workers)}.log"
        # This checkout, whatever else is installed.
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--engine-config",
             str(config_path), "--run-id", self.run_name, "--bootstrap", self.bootstrap,
             "--db-url", self.db_url, "--topic-prefix", self.names.prefix, "--web-port",
             str(port), "--runtime", runtime, "--session-timeout", "6",
             "--group", f"g-{self.names.prefix}", "--log-level", "warning", *extra],
            cwd=self.workdir, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})})
        worker = Worker(proc, port, log)
        self.workers.append(worker)
        if wait:
            wait_for(worker.healthy, 60, "the worker's /health", [worker])
        return worker

    def publish(self, events: Iterable[Event | tuple[bytes | None, bytes]],
                pace: float = 0.0, **producer_options: Any) -> None:
        """Send events (keyed by domain) or raw (key, value) records to ``<prefix>.events``;
        ``pace`` seconds between records."""
        producer = make_producer(self.bootstrap, **producer_options)
        try:
            for item in events:
                if isinstance(item, tuple):
                    producer.send(self.names.events, key=item[0], value=item[1])
                else:
                    producer.send(self.names.events, key=item.domain.encode(),
                                  value=encode(item))
                if pace:
                    time.sleep(pace)
            producer.flush()
        finally:
            producer.close()

    def store(self) -> AuditStore:
        return AuditStore(self.db_url, poolclass=pool.NullPool)

    def count(self, table: str, run_ids: Iterable[str]) -> int:
        with self.store() as store, store.engine.connect() as conn:
            return int(conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE run_id = ANY(:r)"),
                {"r": list(run_ids)}).scalar_one())

    def read(self, topic: str, idle: float = 2.0, timeout: float = 60) -> list[Any]:
        """Every record of ``topic`` from the start, until nothing came for ``idle`` s."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(topic, bootstrap_servers=self.bootstrap, group_id=None,
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        found: list[Any] = []
        deadline, last = time.monotonic() + timeout, time.monotonic()
        try:
            while time.monotonic() < deadline and time.monotonic() - last < idle:
                for records in consumer.poll(timeout_ms=200).values():
                    found.extend(records)
                    last = time.monotonic()
        finally:
            consumer.close()
        return found


@pytest.fixture
def stream_env_factory(kafka_bootstrap: str, migrated_db: str,
                       tmp_path: Path) -> Iterator[Callable[..., StreamEnv]]:
    """``make(partitions=1, config=None)``: a StreamEnv on fresh topics; workers are stopped
    and topics deleted after the test."""
    from tests.synthetic import default_config

    made: list[StreamEnv] = []

    def make(partitions: int = 1, config: EngineConfig | None = None) -> StreamEnv:
        names = topics.TopicNames(f"t{uuid.uuid4().hex[:10]}")
        topics.create_topics(kafka_bootstrap, topics.specs(partitions, 1, names))
        env = StreamEnv(kafka_bootstrap, migrated_db, names, config or default_config(),
                        tmp_path)
        made.append(env)
        return env

    yield make
    from kafka.admin import KafkaAdminClient

    for env in made:
        for worker in env.workers:
            worker.stop()
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.delete_topics(list(env.names.all))
        finally:
            admin.close()


def wait_stored(env: StreamEnv, logs: dict[str, list[Event]], timeout: float,
                workers: Iterable[Worker]) -> None:
    """Wait until every domain's journal has as many events as its log."""
    runs = [env.run_id(d) for d in logs]
    total = sum(len(log) for log in logs.values())
    wait_for(lambda: env.count("event_journal", runs) >= total, timeout, "every event stored",
             workers)


# --- what a correct run looks like ------------------------------------------------------------


def embedded(config: EngineConfig, domain: str,
             log: list[Event]) -> tuple[Any, dict[str, RoutingDecision]]:
    """The one-pass fold of a domain's log, and its routing decisions by query id."""
    state, outputs = fold(initial_state(config.model_copy(update={"domain": domain})), log)
    return state, {o.query_id: o for o in outputs if isinstance(o, RoutingDecision)}


def check_domain(env: StreamEnv, domain: str, log: list[Event]) -> None:
    """The audit trail of one domain is exactly the single-worker fold of its log: the
    journal holds every event once and in order, one decision row per query equal to the
    fold's, and ``verify`` finds no mismatch."""
    run_id = env.run_id(domain)
    with env.store() as store:
        run = store.get_run(run_id)
        assert run is not None, f"no run for domain {domain}"
        journal = list(store.journal(run_id))
        assert [seq for seq, _ in journal] == list(range(len(journal))), f"{domain}: seq gap"
        events = [e for _, e in journal]
        want = [e.model_dump(mode="json") for e in log]
        if events != want:
            first = next((i for i, (a, b) in enumerate(zip(events, want)) if a != b),
                         min(len(events), len(want)))
            pytest.fail(f"{domain}: the journal ({len(events)} events) is not the domain's "
                        f"log ({len(want)}); first difference at seq {first}: "
                        f"{events[first:first + 2]} vs {want[first:first + 2]}")
        rows = list(store.routing_decisions(run_id))
        queries = [e.query_id for e in log if e.type == "query"]
        assert Counter(r["query_id"] for r in rows) == Counter(queries), \
            f"{domain}: not one decision row per query"
        _, want = embedded(env.config, domain, log)
        for row in rows:
            w = want[row["query_id"]]
            assert (row["seq"], row["p"], row["model_id"], row["draw"], row["deployed"]) == \
                (w.seq, w.p, w.model_id, w.draw, w.deployed), (domain, row["query_id"])
        config = EngineConfig.model_validate(run["config"])
        report = verify(config, store.journal(run_id), store.routing_decisions(run_id),
                        store.deployment_decisions(run_id))
        assert report.mismatches == [], f"{domain}: {report.mismatches[:3]}"
        assert report.routing_checked == len(queries)


def decisions_on_topic(env: StreamEnv) -> dict[tuple[str, int], set[bytes]]:
    """Routing decisions on the output topic: the distinct payloads per (domain, seq)."""
    found: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    for record in env.read(env.names.routing_decisions):
        doc = json.loads(record.value)
        if doc["type"] == "routing_decision":
            found[(doc["domain"], doc["seq"])].add(record.value)
    return found


def check_topic(env: StreamEnv, logs: dict[str, list[Event]]) -> None:
    """Every query's decision is on the decisions topic at least once, and every copy of it is
    byte-identical (duplicates are what at-least-once allows, never a different decision)."""
    published = decisions_on_topic(env)
    for domain, log in logs.items():
        _, want = embedded(env.config, domain, log)
        for decision in want.values():
            copies = published.get((domain, decision.seq), set())
            assert copies == {encode(decision)}, (domain, decision.query_id, len(copies))

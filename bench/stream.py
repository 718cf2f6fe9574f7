"""End-to-end streaming benchmark: publish -> worker -> Postgres commit -> decision out.

    python -m bench.stream [--queries 20000] [--latency-queries 10000] [--rate 1000]
                           [--bootstrap HOST:PORT] [--db-url URL]

Starts the broker and Postgres with ``infra/kafka.sh`` / ``infra/postgres.sh`` unless
``--bootstrap`` / ``--db-url`` are given, creates a fresh database and a fresh topic prefix,
starts ``stageroute worker`` as a subprocess, then:

1. *Throughput*: publishes a log of ``--queries`` queries with their feedback (about two
   events per query; built by running the engine, see ``tests.synthetic``) as fast as
   the producer goes, and waits until every routing decision is committed in Postgres.
   Sustained queries/s = queries / (first publish -> last decision committed).
2. *Latency at a fixed offered load*: publishes another domain's log paced at ``--rate``
   queries/s (feedback in between, as in the log) and reads the decisions topic; latency of a
   query = timestamp of its decision message (CreateTime, set by the worker's producer when it
   publishes, before the batch's transaction) - wall time just before the query was sent.
   Prints p50/p99/max.

Set ``STAGEROUTE_BENCH_KEEP=1`` to keep the database and topics for inspection.
Everything runs on this machine: broker, Postgres, worker, publisher and this reader share
its cores, which the figures include.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _start(script: str) -> str:
    out = subprocess.run([str(ROOT / "infra" / script), "start"], capture_output=True,
                         text=True, check=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def _fresh_database(server_url: str) -> str:
    from sqlalchemy import pool

    from streams.audit.db import make_engine, normalize_url
    from streams.audit.migrate import upgrade

    server = normalize_url(server_url)
    name = f"stageroute_bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = server.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    return url


def _drop_database(url: str) -> None:
    from sqlalchemy import pool

    from streams.audit.db import make_engine, normalize_url

    target = normalize_url(url)
    admin = make_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                        poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    admin.dispose()


def _wait_health(port: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("worker did not become healthy")


def _committed(store: object, run_id: str, table: str = "routing_decisions") -> int:
    from sqlalchemy import text

    with store.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE run_id = :r"),
                                {"r": run_id}).scalar_one())


def _applied_at(store: object, run_id: str) -> dict[str, float]:
    from sqlalchemy import text

    with store.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(text(
            "SELECT event->>'query_id', extract(epoch FROM applied_at) FROM event_journal "
            "WHERE run_id = :r AND event_type = 'query'"), {"r": run_id})
        return {q: float(t) for q, t in rows}


class DecisionReader(threading.Thread):
    """Reads the decisions topic; records each routing decision's message timestamp."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                      auto_offset_reset="latest", enable_auto_commit=False)
        self.consumer.poll(timeout_ms=1000)  # join: position at the end now
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for records in self.consumer.poll(timeout_ms=200).values():
                for record in records:
                    doc = json.loads(record.value)
                    if doc.get("type") == "routing_decision":
                        self.seen.setdefault(doc["query_id"], record.timestamp / 1000.0)
        self.consumer.close()


@contextmanager
def live_worker(bootstrap: str, db_url: str, names: Any, config: Any, runtime: str,
                web_port: int, *options: str,
                env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``stageroute worker`` on ``names``' topics and the database ``db_url``, healthy on
    ``web_port``; on the way out it is stopped (SIGTERM) and the topics and the database
    dropped (unless ``STAGEROUTE_BENCH_KEEP`` is set). Its log is in a temporary directory."""
    work = Path(tempfile.mkdtemp(prefix="stageroute-bench-"))
    (work / "engine.json").write_text(config.model_dump_json())
    worker_log = (work / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--engine-config",
         str(work / "engine.json"), "--run-id", f"bench-{names.prefix}", "--bootstrap",
         bootstrap, "--db-url", db_url, "--topic-prefix", names.prefix, "--web-port",
         str(web_port), "--log-level", "warning", "--runtime", runtime, *options],
        cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        _wait_health(web_port)
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
        print(f"  (worker log: {work / 'worker.log'})", flush=True)
        if os.environ.get("STAGEROUTE_BENCH_KEEP") is None:
            topics_admin_cleanup(bootstrap, names)
            _drop_database(db_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--latency-queries", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--bootstrap")
    parser.add_argument("--db-url")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--batch-within", type=float, default=0.02,
                        help="seconds the worker waits to fill a batch")
    parser.add_argument("--web-port", type=int, default=16077)
    parser.add_argument("--runtime", choices=["faust", "aiokafka"], default="aiokafka")
    args = parser.parse_args(argv)

    from schemas import encode
    from streams import topics
    from streams.audit.store import AuditStore
    from streams.live.processor import live_run_id
    from streams.publisher import make_producer
    from tests.synthetic import default_config, synthetic_log

    bootstrap = args.bootstrap or _start("kafka.sh")
    db_url = _fresh_database(args.db_url or _start("postgres.sh"))
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    names = topics.TopicNames(prefix)
    topics.create_topics(bootstrap, topics.specs(1, 1, names))
    config = default_config()
    print(f"building logs ({args.queries} + {args.latency_queries} queries) ...", flush=True)
    log = synthetic_log(args.queries, config, domain="tput")
    lat_log = synthetic_log(args.latency_queries, config, domain="lat", seed=1)
    run_name = f"bench-{prefix}"
    store = AuditStore(db_url)
    with live_worker(bootstrap, db_url, names, config, args.runtime, args.web_port,
                     "--batch-size", str(args.batch_size),
                     "--batch-within", str(args.batch_within)) as worker:
            producer = make_producer(bootstrap, linger_ms=5)
            # Warm up: the worker's first batch loads the run and starts its producer.
            producer.send(names.events, key=b"tput", value=encode(log[0]))
            producer.flush()
            run_id = live_run_id(run_name, "tput")
            while _committed(store, run_id, "event_journal") == 0:
                time.sleep(0.05)
            time.sleep(1.0)

            # 1. throughput
            started = time.time()
            for event in log[1:]:
                producer.send(names.events, key=b"tput", value=encode(event))
            producer.flush()
            published = time.time()
            queries = sum(1 for e in log if e.type == "query")
            while _committed(store, run_id) < queries:
                if worker.poll() is not None:
                    raise RuntimeError("worker exited; see its log")
                time.sleep(0.02)
            finished = time.time()
            qps = queries / (finished - started)
            print(f"throughput: {queries} queries ({len(log)} events) in "
                  f"{finished - started:.2f} s "
                  f"= {qps:,.0f} queries/s sustained end to end "
                  f"(publishing alone took {published - started:.2f} s = "
                  f"{len(log) / (published - started):,.0f} events/s)", flush=True)

            # 2. latency at a fixed offered load
            reader = DecisionReader(bootstrap, names.routing_decisions)
            reader.start()
            sent: dict[str, float] = {}
            origin = time.time() + 0.5
            n = 0
            for event in lat_log:
                if event.type == "query":
                    due = origin + n / args.rate
                    pause = due - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    n += 1
                    sent[event.query_id] = time.time()
                producer.send(names.events, key=b"lat", value=encode(event))
            producer.flush()
            offered = n / (time.time() - origin)
            deadline = time.time() + 30
            while len(reader.seen) < len(sent) and time.time() < deadline:
                time.sleep(0.1)
            reader.stop.set()
            latencies = sorted((reader.seen[q] - t) * 1000.0 for q, t in sent.items()
                               if q in reader.seen)
            missing = len(sent) - len(latencies)
            q = statistics.quantiles(latencies, n=100)
            print(f"latency at {offered:,.0f} queries/s offered ({len(latencies)} decisions, "
                  f"{missing} missing): p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
                  f"max {latencies[-1]:.1f} ms", flush=True)
            applied = _applied_at(store, live_run_id(run_name, "lat"))
            stage = sorted((applied[q] - t) * 1000.0 for q, t in sent.items() if q in applied)
            if stage:
                qa = statistics.quantiles(stage, n=100)
                print(f"  of which publish -> batch applied: p50 {qa[49]:.1f} ms, "
                      f"p99 {qa[98]:.1f} ms", flush=True)
            with urllib.request.urlopen(f"http://127.0.0.1:{args.web_port}/metrics") as r:
                metrics = r.read().decode()
            batches = [line for line in metrics.splitlines() if line.startswith("stageroute_b")]
            print("worker: " + "; ".join(batches))
            producer.close()
    store.close()
    return 0


def topics_admin_cleanup(bootstrap: str, names: object) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(list(names.all))  # type: ignore[attr-defined]
    except Exception:  # cleanup is best effort
        pass
    finally:
        admin.close()


if __name__ == "__main__":
    sys.exit(main())

"""Backlog drain: a worker started on a log of pre-published queries with their feedback.

    python -m bench.drain [--queries 100000] [--runtime aiokafka|faust] [--no-trail]
                          [--bootstrap HOST:PORT] [--db-url URL]

Starts the broker and PostgreSQL with ``infra/kafka.sh`` / ``infra/postgres.sh`` unless
``--bootstrap`` / ``--db-url`` are given, creates a fresh database and fresh topics (one
partition, one domain), publishes the whole log (``--queries`` queries, their feedback five
queries later, the arrivals, expiries and stage boundaries; see ``tests.synthetic``) and only
then starts ``stageroute worker``. It prints:

* **published**: decisions/s from the worker's first decision message to its last (the
  messages' CreateTime, set by the worker's producer) -- how fast decisions leave the worker;
* **stored**: queries/s from the first decision message until every decision is in the
  audit trail (``stageroute_routing_decisions_total`` on /metrics counts the stored ones);
* the worker's batches and how often the trail's lag bound paused it.

``--no-trail`` runs the worker with ``STAGEROUTE_BENCH_NO_PERSIST=1`` (the journal, decisions
and positions are not written; such a run is no audit trail): with it, the same command
measures what the audit trail costs. Run both in one session for a same-run reference.
Everything (broker, PostgreSQL, worker, this process) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
import uuid

from bench.stream import _fresh_database, _start, live_worker

DOMAIN = "drain"


def _metric(port: int, name: str) -> float:
    """A metric of the worker's /metrics, summed over its labels (0 when absent or
    unreachable)."""
    total = 0.0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith((name + " ", name + "{")):
                    total += float(line.rsplit(maxsplit=1)[1])
    except OSError:
        pass
    return total


def _decision_times(bootstrap: str, topic: str, expected: int) -> list[float]:
    """CreateTime (seconds) of every routing decision on ``topic``, read after the run."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=10_000)
    times: list[float] = []
    deadline = time.monotonic() + 120
    try:
        while len(times) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                # A byte test, not a JSON parse: decisions are the only messages saying so.
                times.extend(r.timestamp / 1000.0 for r in records
                             if b'"routing_decision"' in r.value)
    finally:
        consumer.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--runtime", choices=["faust", "aiokafka"], default="aiokafka")
    parser.add_argument("--no-trail", action="store_true",
                        help="skip the audit trail's writes (STAGEROUTE_BENCH_NO_PERSIST=1)")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--bootstrap")
    parser.add_argument("--db-url")
    parser.add_argument("--web-port", type=int, default=16078)
    args = parser.parse_args(argv)

    from schemas import encode
    from streams import topics
    from streams.publisher import make_producer
    from tests.synthetic import default_config, synthetic_log

    bootstrap = args.bootstrap or _start("kafka.sh")
    db_url = _fresh_database(args.db_url or _start("postgres.sh"))
    names = topics.TopicNames(f"drain{uuid.uuid4().hex[:8]}")
    topics.create_topics(bootstrap, topics.specs(1, 1, names))
    config = default_config()
    print(f"building the log ({args.queries:,} queries) ...", flush=True)
    log = synthetic_log(args.queries, config, domain=DOMAIN)
    queries = sum(1 for e in log if e.type == "query")
    started = time.time()
    producer = make_producer(bootstrap)
    for event in log:
        producer.send(names.events, key=DOMAIN.encode(), value=encode(event))
    producer.flush()
    producer.close()
    print(f"published {len(log):,} events ({queries:,} queries) in "
          f"{time.time() - started:.1f} s", flush=True)

    env = {"STAGEROUTE_BENCH_NO_PERSIST": "1"} if args.no_trail else {}
    with live_worker(bootstrap, db_url, names, config, args.runtime, args.web_port,
                     "--batch-size", str(args.batch_size), env=env) as worker:
        while _metric(args.web_port, "stageroute_routing_decisions_total") < queries:
            if worker.poll() is not None:
                raise RuntimeError("the worker exited; see its log")
            time.sleep(0.1)
        stored = time.time()
        batches = _metric(args.web_port, "stageroute_batches_total")
        pauses = _metric(args.web_port, "stageroute_trail_lag_pauses_total")
        times = _decision_times(bootstrap, names.routing_decisions, queries)
        first, last = min(times), max(times)
        what = "acked (no audit trail)" if args.no_trail else "stored"
        print(f"runtime {args.runtime}{', no audit trail' if args.no_trail else ''}: "
              f"{queries:,} queries, {len(log):,} events", flush=True)
        print(f"  published: {len(times):,} decisions in {last - first:.2f} s = "
              f"{len(times) / max(last - first, 1e-9):,.0f} decisions/s", flush=True)
        print(f"  {what}: all {queries:,} {stored - first:.2f} s after the first decision = "
              f"{queries / max(stored - first, 1e-9):,.0f} queries/s", flush=True)
        print(f"  worker: {batches:.0f} batches, {pauses:.0f} lag-bound pauses", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

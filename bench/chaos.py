"""Chaos run and memory soak of the live worker (a command, not a test).

    python -m bench.chaos [--queries 100000] [--domains 8] [--partitions 4] [--workers 3]
                          [--runtime aiokafka|faust] [--kill-every 20] [--seed 0]
    python -m bench.chaos --soak 1000000 [--runtime aiokafka] [--max-tracked 100000]

Chaos: starts the broker and PostgreSQL with the infra scripts (unless ``--bootstrap`` /
``--db-url``), a fresh database and topics, ``--workers`` workers of one run, and publishes a
log of ``--queries`` queries (with their feedback) over ``--domains`` domains as fast as the
producer goes. While the workers drain it, a random worker is SIGKILLed every ``--kill-every``
seconds and started again, PostgreSQL is stopped for 15 s once and the broker is restarted once
(no supervisor: the workers ride both out). Then it prints what was sent and stored, duplicates,
losses, dead letters, restarts, and ``verify`` over every domain.

Soak: one worker, one domain, ``--soak`` queries streamed as they are generated (the log never
sits in memory), the worker's resident memory sampled from ``/proc`` as it goes.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.stream import ROOT, _drop_database, _fresh_database, _start, _wait_health


def _worker(args: argparse.Namespace, env: dict[str, Any], index: int) -> subprocess.Popen[bytes]:
    port = args.web_port + index
    log = (env["work"] / f"worker-{index}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--engine-config",
         str(env["work"] / "engine.json"), "--run-id", env["run"], "--bootstrap",
         env["bootstrap"], "--db-url", env["db"], "--topic-prefix", env["prefix"],
         "--web-port", str(port), "--runtime", args.runtime, "--session-timeout", "6",
         "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    _wait_health(port, 120)
    return proc


def _count(store: Any, sql: str, **params: Any) -> int:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def _infra(script: str, action: str) -> None:
    subprocess.run([str(ROOT / "infra" / script), action], check=True, timeout=300,
                   capture_output=True)


def _stream_log(config: Any, domain: str, n_queries: int, seed: int,
                send: Any) -> int:
    """Generate a domain's log by running the engine (as ``tests.synthetic`` does) and hand
    each event to ``send`` as it is made; returns the number of events."""
    from stageroute.backtest.driver import Stream, drive, iid_rows, table_workload
    from stageroute.backtest.scenario import ModelWindow, Scenario, equal_stages
    from stageroute.engine import initial_state
    from tests.synthetic import bundled_table

    table = bundled_table()
    models = table.models[:5]
    windows = [ModelWindow(models[0], 0, int(0.7 * n_queries)),
               *(ModelWindow(m, 0, None) for m in models[1:-1]),
               ModelWindow(models[-1], int(0.4 * n_queries), None)]
    scenario = Scenario(n_queries, tuple(windows), equal_stages(n_queries))
    stream = Stream(iid_rows(table.n_rows, n_queries, seed), scenario, 0.6, feedback_delay=5,
                    domain=domain, query_prefix=f"{domain}-")
    count = 0

    def record(seq: int, event: Any, outputs: Any) -> None:
        nonlocal count
        send(event)
        count += 1

    state = initial_state(config.model_copy(update={"domain": domain}))
    for _ in drive(state, table_workload(table, stream), record):
        pass
    return count


def chaos(args: argparse.Namespace, env: dict[str, Any], store: Any) -> None:
    from schemas import encode
    from stageroute.engine import EngineConfig
    from stageroute.verify import verify
    from streams.live.processor import live_run_id
    from streams.publisher import make_producer

    domains = [f"d{i}" for i in range(args.domains)]
    per_domain = args.queries // len(domains)
    workers = [_worker(args, env, i) for i in range(args.workers)]
    restarts = 0
    sent = Counter[str]()

    def publish() -> None:
        producer = make_producer(env["bootstrap"], request_timeout_ms=120_000,
                                 delivery_timeout_ms=600_000)
        for i, domain in enumerate(domains):
            def send(event: Any, domain: str = domain) -> None:
                producer.send(env["names"].events, key=domain.encode(), value=encode(event))
                sent[domain] += 1

            _stream_log(env["config"], domain, per_domain, args.seed + i, send)
        producer.flush()
        producer.close()

    started = time.time()
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    runs = [live_run_id(env["run"], d) for d in domains]
    journal_sql = "SELECT count(*) FROM event_journal WHERE run_id = ANY(:r)"
    rng = random.Random(args.seed)
    outages = {"database": False, "broker": False}
    last_kill = time.time()
    while publisher.is_alive() or _count(store, journal_sql, r=runs) < sum(sent.values()):
        time.sleep(1)
        stored = _count(store, journal_sql, r=runs)
        total = args.queries * 2
        if not outages["database"] and stored > total * 0.3:
            outages["database"] = True
            print(f"[{time.time() - started:6.0f} s] stopping PostgreSQL for 15 s", flush=True)
            _infra("postgres.sh", "stop")
            time.sleep(15)
            _infra("postgres.sh", "start")
        elif not outages["broker"] and stored > total * 0.6:
            outages["broker"] = True
            print(f"[{time.time() - started:6.0f} s] restarting the broker", flush=True)
            _infra("kafka.sh", "stop")
            _infra("kafka.sh", "start")
        elif time.time() - last_kill > args.kill_every:
            victim = rng.randrange(len(workers))
            print(f"[{time.time() - started:6.0f} s] SIGKILL worker {victim} ({stored} events "
                  f"stored)", flush=True)
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            workers[victim] = _worker(args, env, victim)
            restarts += 1
            last_kill = time.time()
        for i, proc in enumerate(workers):
            if proc.poll() is not None:
                print(f"worker {i} exited on its own ({proc.returncode}); restarting it")
                workers[i] = _worker(args, env, i)
                restarts += 1
    elapsed = time.time() - started
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        proc.wait(timeout=60)

    events = sum(sent.values())
    stored = _count(store, journal_sql, r=runs)
    queries = _count(store, "SELECT count(DISTINCT event->>'query_id') FROM event_journal "
                            "WHERE run_id = ANY(:r) AND event_type = 'query'", r=runs)
    rows = _count(store, "SELECT count(*) FROM routing_decisions WHERE run_id = ANY(:r)", r=runs)
    distinct = _count(store, "SELECT count(DISTINCT (run_id, query_id)) FROM routing_decisions "
                             "WHERE run_id = ANY(:r)", r=runs)
    dead = _count(store, "SELECT count(*) FROM dead_letters WHERE run_id = ANY(:r)",
                  r=[*runs, live_run_id(env["run"], "")])
    mismatches = 0
    for run_id in runs:
        run = store.get_run(run_id)
        report = verify(EngineConfig.model_validate(run["config"]), store.journal(run_id),
                        store.routing_decisions(run_id), store.deployment_decisions(run_id))
        mismatches += len(report.mismatches)
    print(f"\n{args.runtime}: {args.workers} workers, {len(domains)} domains on "
          f"{args.partitions} partitions, {elapsed:.0f} s")
    print(f"sent {events} events ({queries} queries decided of {per_domain * len(domains)})")
    print(f"stored {stored} journal events, {rows} decision rows")
    print(f"duplicates {stored - events if stored > events else 0} events, "
          f"{rows - distinct} decisions")
    print(f"lost {max(0, events - stored)} events, {per_domain * len(domains) - distinct} "
          f"decisions")
    print(f"dead-lettered {dead}")
    print(f"restarts {restarts} (SIGKILL), outages: PostgreSQL 15 s, broker restart")
    print(f"verify: {mismatches} mismatches over {len(runs)} domains")


def soak(args: argparse.Namespace, env: dict[str, Any], store: Any) -> None:
    from schemas import encode
    from streams.live.processor import live_run_id
    from streams.publisher import make_producer

    proc = _worker(args, env, 0)
    run_id = live_run_id(env["run"], "soak")
    producer = make_producer(env["bootstrap"])
    samples: list[tuple[int, int, float]] = []
    sent = 0
    stop = threading.Event()

    def rss() -> int:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
        return 0

    def sample() -> None:
        while not stop.is_set():
            done = _count(store, "SELECT count(*) FROM routing_decisions WHERE run_id = :r",
                          r=run_id)
            samples.append((done, rss(), time.time()))
            stop.wait(10)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def send(event: Any) -> None:
        nonlocal sent
        producer.send(env["names"].events, key=b"soak", value=encode(event))
        sent += 1
        if sent % 200_000 == 0:  # keep the backlog bounded: a soak, not a drain
            producer.flush()
            while _count(store, "SELECT count(*) FROM event_journal WHERE run_id = :r",
                         r=run_id) < sent - 100_000:
                time.sleep(1)

    started = time.time()
    _stream_log(env["config"], "soak", args.soak, args.seed, send)
    producer.flush()
    producer.close()
    while _count(store, "SELECT count(*) FROM event_journal WHERE run_id = :r",
                 r=run_id) < sent:
        time.sleep(2)
    stop.set()
    sampler.join()
    samples.append((_count(store, "SELECT count(*) FROM routing_decisions WHERE run_id = :r",
                           r=run_id), rss(), time.time()))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    print(f"\nsoak: {args.soak} queries ({sent} events), {args.runtime}, max_tracked_queries "
          f"{args.max_tracked}, {time.time() - started:.0f} s")
    print("queries decided    worker RSS MiB")
    step = max(1, len(samples) // 12)
    for done, mib, _ in samples[::step] + samples[-1:]:
        print(f"{done:>15,}    {mib:>14}")
    snapshots = _count(store, "SELECT count(*) FROM snapshots WHERE run_id = :r", r=run_id)
    size = _count(store, "SELECT coalesce(max(length(state)), 0) FROM snapshots "
                         "WHERE run_id = :r", r=run_id)
    print(f"snapshots kept {snapshots}, largest {size / 1024:.0f} KiB compressed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--runtime", choices=["faust", "aiokafka"], default="aiokafka")
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soak", type=int, default=0, help="queries of a memory soak")
    parser.add_argument("--max-tracked", type=int, default=100_000,
                        help="the soak's max_tracked_queries (the tracked-query window)")
    parser.add_argument("--web-port", type=int, default=16100)
    parser.add_argument("--bootstrap")
    parser.add_argument("--db-url")
    args = parser.parse_args(argv)

    from streams import topics
    from streams.audit.store import AuditStore
    from tests.synthetic import default_config

    if not args.soak and (args.bootstrap or args.db_url):
        parser.error("the chaos run restarts the services itself: use the infra scripts")
    bootstrap = args.bootstrap or _start("kafka.sh")
    db_url = _fresh_database(args.db_url or _start("postgres.sh"))
    prefix = f"chaos{uuid.uuid4().hex[:8]}"
    names = topics.TopicNames(prefix)
    topics.create_topics(bootstrap, topics.specs(1 if args.soak else args.partitions, 1, names))
    config = default_config()
    if args.soak:
        config = config.model_copy(update={"max_tracked_queries": args.max_tracked})
    work = Path(f"/tmp/stageroute-chaos-{prefix}")
    work.mkdir(parents=True)
    (work / "engine.json").write_text(config.model_dump_json())
    env = {"bootstrap": bootstrap, "db": db_url, "prefix": prefix, "names": names,
           "config": config, "work": work, "run": f"chaos-{prefix}"}
    store = AuditStore(db_url)
    try:
        (soak if args.soak else chaos)(args, env, store)
    finally:
        store.close()
        from bench.stream import topics_admin_cleanup

        topics_admin_cleanup(bootstrap, names)
        _drop_database(db_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

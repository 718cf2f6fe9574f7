"""Client round trip: a gateway's ``Client.route`` against a live worker at fixed offered loads.

    python -m bench.client [--rates 1000,5000] [--seconds 10] [--runtime aiokafka|faust]
                           [--bootstrap HOST:PORT] [--db-url URL]

Starts the broker and PostgreSQL with ``infra/kafka.sh`` / ``infra/postgres.sh`` unless
``--bootstrap`` / ``--db-url`` are given, creates a fresh database and fresh topics (one
partition, one domain), starts ``stageroute worker`` and one ``streams.client.Client`` in this
process. Five models arrive and a stage starts (through the client), then for each rate the
client routes ``rate x seconds`` queries, open loop: query ``i`` is due at ``start + i/rate``
whatever happened to the earlier ones, and its round trip is measured **from when it was due**
to when its decision reached the client (so a client or worker that falls behind shows up in
the figures instead of slowing the offered load). On each decision the gateway reports
feedback (reward drawn from the bundled RouterBench table for the query's task and the chosen
model, cost the model's mean cost), as a gateway would. Prints p50 / p99 / p99.9 / max,
fallbacks (no decision within ``--timeout``) and the worker's consumer lag sampled every
second (flat = the worker keeps up with the offered load).

Then, as the reference measured in the same run (``--no-floor`` skips it), the same open loop
through Kafka alone: an echo process copies each query to the decisions topic the moment it
reads it, with the worker's consumer and producer settings and no work. Its round trip is the
floor under any worker here (two broker hops, the asyncio client, the machine's load).

Everything (broker, PostgreSQL, worker, this client) shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.drain import _metric
from bench.stream import _fresh_database, _start, live_worker

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "gw"


async def _lag_sampler(port: int, samples: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        lag = await loop.run_in_executor(None, _metric, port, "stageroute_consumer_lag")
        samples.append(lag)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _drive(args: argparse.Namespace, bootstrap: str, prefix: str) -> None:
    from schemas import QueryFeatures
    from streams.client import Client
    from tests.synthetic import bundled_table

    table = bundled_table()
    models = list(table.models[:5])
    mean_cost = dict(zip(table.models, table.mean_cost(), strict=True))
    tasks = list(table.tasks)  # in table order: the tasks' mix
    reward_of = _reward_lookup(table)
    rng = np.random.default_rng(0)
    async with Client(bootstrap, domains=[DOMAIN], default_domain=DOMAIN,
                      fallback_model=models[0], timeout=args.timeout,
                      topic_prefix=prefix) as client:
        for model in models:
            await client.model_arrived(model, 0.6)
        await client.stage_boundary(0)
        sent: list[bool] = []
        dues: dict[str, float] = {}
        received: dict[str, float] = {}

        async def one(query_id: str, task: str, due: float, out: list[float],
                      fell_back: list[str]) -> None:
            route = await client.route(query_id, QueryFeatures(task=task))
            received[query_id] = time.time()
            dues[query_id] = due
            out.append((received[query_id] - due) * 1000.0)
            if route.fallback is not None:
                fell_back.append(route.fallback)
                return
            reward = float(rng.random() < reward_of(task, route.model_id))
            sent.append(await client.feedback(query_id, route.model_id, reward,
                                              float(mean_cost[route.model_id])))

        for i in range(200):  # warm up: the run is created, the worker's producer started
            await one(f"warm-{i}", tasks[i % len(tasks)], time.time(), [], [])
        gc.freeze()  # as a gateway would once started: see ``streams.client``
        for rate in args.rates:
            lags: list[float] = []
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(_lag_sampler(args.web_port, lags, stop))
            await _open_loop(rate, args.seconds, partial(_numbered, one, f"r{rate}-", tasks),
                             "stageroute")
            stop.set()
            await sampler
            print(f"  worker consumer lag (records, every second): "
                  f"{' '.join(f'{x:.0f}' for x in lags)}", flush=True)
        await client.flush()
        print(f"feedback: {sum(sent):,} sent and acknowledged", flush=True)
    _breakdown(bootstrap, prefix, args.rates, dues, received)


async def _numbered(one: Callable[..., Awaitable[None]], prefix: str, tasks: list[str],
                    i: int, due: float, out: list[float], fell_back: list[str]) -> None:
    await one(f"{prefix}{i}", tasks[i % len(tasks)], due, out, fell_back)


One = Callable[[int, float, list[float], list[str]], Awaitable[None]]


async def _open_loop(rate: float, seconds: float, one: One, label: str) -> None:
    """Start ``one(i, due, latencies, fell_back)`` at ``due = start + i / rate`` whatever
    happened to the earlier ones; print the round trips' percentiles."""
    count = int(rate * seconds)
    latencies: list[float] = []
    fell_back: list[str] = []
    running: list[asyncio.Task[None]] = []
    start = time.time() + 0.1
    for i in range(count):
        due = start + i / rate
        pause = due - time.time()
        if pause > 0:
            await asyncio.sleep(pause)
        running.append(asyncio.ensure_future(one(i, due, latencies, fell_back)))
    offered = count / (time.time() - start)
    await asyncio.gather(*running)
    lat = np.array(latencies)
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
    print(f"{label}: {rate:,.0f} queries/s offered ({offered:,.0f} reached by the sender, "
          f"{count:,} queries): round trip p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"p99.9 {p999:.1f} ms, max {lat.max():.1f} ms; {len(fell_back)} fell back",
          flush=True)


async def _floor(args: argparse.Namespace, bootstrap: str, prefix: str) -> None:
    """The same open loop through Kafka alone: each query is published as ``Client`` does,
    an echo process (``_echo``) copies it to the decisions topic at once, and the round trip
    ends when the copy is read back; feedback is published on receipt. What this costs is the
    floor under any worker on this machine: two broker hops and the asyncio client."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.errors import KafkaError

    from schemas import Feedback, Query, QueryFeatures, encode
    from streams import topics

    names = topics.TopicNames(prefix)
    ready = multiprocessing.get_context("spawn").Event()
    echo = multiprocessing.get_context("spawn").Process(
        target=_echo, args=(bootstrap, names.events, names.routing_decisions, ready),
        daemon=True)
    echo.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=0,
                                max_batch_size=256 * 1024)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=100)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(names.routing_decisions, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    pending: dict[str, asyncio.Future[str | None]] = {}

    async def read() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    future = pending.pop(json.loads(record.value)["query_id"], None)
                    if future is not None and not future.done():
                        future.set_result(None)

    async def one(i: int, due: float, out: list[float], fell_back: list[str]) -> None:
        query_id = f"floor-{due}-{i}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        pending[query_id] = future
        deadline = loop.call_later(args.timeout, _expire, future)
        try:
            await producer.send(names.events, encode(Query(
                domain=DOMAIN, time=time.time(), query_id=query_id,
                features=QueryFeatures(task="mbpp"))), key=DOMAIN.encode())
            outcome = await future
        except KafkaError as exc:
            outcome = type(exc).__name__
        deadline.cancel()
        pending.pop(query_id, None)
        out.append((time.time() - due) * 1000.0)
        if outcome is not None:
            fell_back.append(outcome)
            return
        with contextlib.suppress(KafkaError):
            await producer.send(names.events, encode(Feedback(
                domain=DOMAIN, time=time.time(), query_id=query_id, model_id="m",
                reward=1.0, cost=0.001)), key=DOMAIN.encode())

    try:
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
        reader = asyncio.ensure_future(read())
        for rate in args.rates:
            await _open_loop(rate, args.seconds, one, "Kafka floor (echo)")
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
    finally:
        echo.terminate()
        await producer.stop()
        await consumer.stop()


def _expire(future: asyncio.Future[str | None]) -> None:
    if not future.done():
        future.set_result("timeout")


def _echo(bootstrap: str, source: str, target: str, ready: Any) -> None:
    """Copy every query on ``source`` to ``target`` as soon as it is read (the floor's
    stand-in for the worker: the same consumer and producer settings, no work)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def run() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False, fetch_max_wait_ms=2)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    enable_idempotence=True, linger_ms=1,
                                    max_batch_size=256 * 1024)
        await consumer.start()
        await producer.start()
        tp = TopicPartition(source, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        ready.set()
        while True:
            fetched = await consumer.getmany(timeout_ms=2, max_records=2000)
            for records in fetched.values():
                for record in records:
                    if b'"type":"query"' in record.value:
                        await producer.send(target, record.value, key=record.key)

    asyncio.run(run())


def _breakdown(bootstrap: str, prefix: str, rates: list[float], dues: dict[str, float],
               received: dict[str, float]) -> None:
    """Where the round trip goes, from the messages' CreateTime: due -> the query handed to
    the client's producer; -> its decision handed to the worker's producer (broker in, worker
    fetch, apply); -> received by the client (broker out, the client's fetch and loop)."""
    from streams import topics

    names = topics.TopicNames(prefix)
    sent = _stamps(bootstrap, names.events, b'"query"')
    decided = _stamps(bootstrap, names.routing_decisions, b'"routing_decision"')
    for rate in rates:
        ids = [q for q in dues if q.startswith(f"r{rate}-") and q in sent and q in decided
               and q in received]
        if not ids:
            continue
        parts = {"due -> query sent": [sent[q] - dues[q] for q in ids],
                 "-> decision sent (worker)": [decided[q] - sent[q] for q in ids],
                 "-> decision received": [received[q] - decided[q] for q in ids]}
        print(f"  {rate:,.0f}/s, {len(ids):,} decided in time: " + "; ".join(
            f"{name} p50 {np.percentile(v, 50) * 1000:.1f} / p99 "
            f"{np.percentile(v, 99) * 1000:.1f} ms" for name, v in parts.items()), flush=True)


def _stamps(bootstrap: str, topic: str, kind: bytes) -> dict[str, float]:
    """query id -> CreateTime (s) of the first message of ``kind`` on ``topic``."""
    import json

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000, max_poll_records=10_000)
    found: dict[str, float] = {}
    try:
        for record in consumer:
            if kind in record.value:
                found.setdefault(json.loads(record.value)["query_id"], record.timestamp / 1e3)
    finally:
        consumer.close()
    return found


def _reward_lookup(table: Any) -> Callable[[str, str], float]:
    """(task, model) -> the model's mean score on the task in the bundled table."""
    tasks = np.asarray(table.tasks)
    means: dict[tuple[str, str], float] = {}
    for task in set(table.tasks):
        rows = tasks == task
        for j, model in enumerate(table.models):
            means[(task, model)] = float(np.nanmean(table.scores[rows, j]))
    return lambda task, model: means.get((task, model), 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,5000",
                        type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="the client's timeout (a decision later than this falls back)")
    parser.add_argument("--runtime", choices=["faust", "aiokafka"], default="aiokafka")
    parser.add_argument("--batch-within", type=float, default=0.002,
                        help="seconds the worker waits to fill a batch")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the reference run through Kafka alone (an echo process)")
    parser.add_argument("--bootstrap")
    parser.add_argument("--db-url")
    parser.add_argument("--web-port", type=int, default=16079)
    args = parser.parse_args(argv)

    from streams import topics
    from tests.synthetic import default_config

    bootstrap = args.bootstrap or _start("kafka.sh")
    db_url = _fresh_database(args.db_url or _start("postgres.sh"))
    names = topics.TopicNames(f"gw{uuid.uuid4().hex[:8]}")
    topics.create_topics(bootstrap, topics.specs(1, 1, names))
    with live_worker(bootstrap, db_url, names, default_config(), args.runtime, args.web_port,
                     "--batch-within", str(args.batch_within)):
        print(f"runtime {args.runtime}, --batch-within {args.batch_within}", flush=True)
        asyncio.run(_drive(args, bootstrap, names.prefix))
    if args.floor:
        floor = topics.TopicNames(f"fl{uuid.uuid4().hex[:8]}")
        topics.create_topics(bootstrap, topics.specs(1, 1, floor))
        asyncio.run(_floor(args, bootstrap, floor.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())

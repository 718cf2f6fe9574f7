"""Hostile input through Kafka: over 10,000 bad records (random bytes, wrong types, extreme and
huge values, junk keys, keys that are not the event's domain) interleaved with two domains'
good logs, against a real worker (both runtimes). The worker never crashes, each bad record is
a dead letter exactly once (found by its input position), and each good query is decided
exactly once, as the single-worker fold decides it."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from schemas import encode
from streams.publisher import make_producer
from tests.integration.livekit import (
    RUNTIMES,
    check_domain,
    check_topic,
    decisions_on_topic,
    wait_for,
    wait_stored,
)
from tests.synthetic import synthetic_log

pytestmark = pytest.mark.integration

N_BAD = 10_200
NUMERIC = frozenset({"time", "stage", "alpha", "reward", "cost"})
TEXT = frozenset({"query_id", "model_id", "domain"})


def hostile(rng: random.Random, good: list[Any]) -> tuple[bytes | None, bytes]:
    """One record the worker must reject at the boundary (never journaled)."""
    kind = rng.randrange(9)
    event = rng.choice(good).model_dump(mode="json")
    key = event["domain"].encode()
    if kind == 0:  # bytes
        return key, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if kind == 1:  # wrong types of required fields
        field = rng.choice([k for k in event if k in NUMERIC | TEXT])
        event[field] = rng.choice(["x", [], {}, None, True, "1.0"] if field in NUMERIC else
                                  [1, [], {}, None, True, 2.5])
        return key, json.dumps(event).encode()
    if kind == 2:  # extreme numbers
        field = rng.choice(["time", "cost", "reward", "alpha", "stage", "cost_min"])
        event[field] = rng.choice([1e308, -1.0, 2**63, 2**64, 5e-324 if field == "alpha" else
                                   -5e-324, 1e13])
        text = json.dumps(event).replace("Infinity", "1e999")
        return key, text.encode()
    if kind == 3:  # huge values
        event[rng.choice(["query_id", "model_id", "domain"])] = "q" * rng.choice([300, 100_000])
        return key, json.dumps(event).encode()
    if kind == 4:  # junk keys on a good event
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))), \
            json.dumps(event).encode()
    if kind == 5:  # a key that is another domain
        return (b"us" if event["domain"] == "eu" else b"eu"), json.dumps(event).encode()
    if kind == 6:  # no key
        return None, json.dumps(event).encode()
    if kind == 7:  # structure
        return key, rng.choice([b"[]", b"null", b"1", b'"x"', b"{}", b"[" * 5000 + b"]" * 5000,
                                b'{"type": "query"', json.dumps([event]).encode()])
    event["schema_version"] = rng.choice([2, 0, "1"])  # versions
    return key, json.dumps(event).encode()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ten_thousand_hostile_records_crash_nothing_and_are_each_a_dead_letter_once(
        stream_env_factory: Any, runtime: str) -> None:
    env = stream_env_factory(partitions=2)
    logs = {d: synthetic_log(300, env.config, domain=d, seed=i)
            for i, d in enumerate(("eu", "us"))}
    good = [e for log in logs.values() for e in log]
    rng = random.Random(9)
    stream: list[tuple[bool, bytes | None, bytes]] = []
    order = {d: iter(log) for d, log in logs.items()}
    remaining = {d: len(log) for d, log in logs.items()}
    bad_left = N_BAD
    while bad_left or any(remaining.values()):
        if bad_left and (rng.random() < 0.85 or not any(remaining.values())):
            stream.append((True, *hostile(rng, good)))
            bad_left -= 1
            continue
        domain = rng.choice([d for d, n in remaining.items() if n])
        remaining[domain] -= 1
        event = next(order[domain])
        stream.append((False, domain.encode(), encode(event)))

    worker = env.start_worker(runtime, "--batch-size", "500")
    producer = make_producer(env.bootstrap)
    try:
        futures = [(bad, producer.send(env.names.events, key=key, value=value))
                   for bad, key, value in stream]
        producer.flush()
        bad_at = sorted((m.partition, m.offset) for m in
                        (f.get(timeout=30) for bad, f in futures if bad))
    finally:
        producer.close()
    assert len(bad_at) == N_BAD

    wait_stored(env, logs, 240, [worker])
    worker_run = [env.run_id("")]
    wait_for(lambda: env.count("dead_letters", worker_run) >= N_BAD, 120,
             "every dead letter", [worker])
    assert worker.alive(), worker.log_tail()
    metrics = worker.metrics()
    assert worker.stop() == 0
    assert "Traceback" not in worker.log.read_text(errors="replace")

    for domain, log in logs.items():
        check_domain(env, domain, log)
    check_topic(env, logs)
    assert sum(len(c) for c in decisions_on_topic(env).values()) == \
        sum(1 for e in good if e.type == "query"), "each good query decided exactly once"
    with env.store() as store:
        letters = store.dead_letters(env.run_id(""))
        with store.engine.connect() as conn:
            from sqlalchemy import text

            positions = sorted(tuple(r) for r in conn.execute(text(
                "SELECT src_partition, src_offset FROM dead_letters WHERE run_id = :r"),
                {"r": env.run_id("")}))
        for domain in logs:
            assert store.dead_letters(env.run_id(domain)) == []
    assert positions == bad_at, "each bad record is a dead letter exactly once"
    reasons = {d["reason"] for d in letters}
    assert {"malformed", "schema_mismatch", "key_mismatch", "invalid_value",
            "unknown_schema_version"} <= reasons, reasons
    assert len(env.read(env.names.dead_letters)) == N_BAD
    assert metrics["dead_letters_total"] == N_BAD

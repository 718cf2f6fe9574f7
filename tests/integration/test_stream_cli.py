"""``stageroute topics create | publish | replay`` against the real broker, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import topics
from streams.eventlog import write_event_log
from tests.synthetic import default_config, synthetic_log

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": path},
                          input=stdin.decode() if stdin is not None else None)


def _read(bootstrap: str, topic: str, idle: float = 1.5) -> list[dict[str, object]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    found = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle:
            for records in consumer.poll(timeout_ms=200).values():
                found.extend(json.loads(r.value) for r in records)
                last = time.monotonic()
    finally:
        consumer.close()
    return found


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    name = f"c{uuid.uuid4().hex[:10]}"
    yield name
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        existing = set(admin.list_topics())
        doomed = [t for t in topics.TopicNames(name).all if t in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()


def test_topics_create_is_idempotent(kafka_bootstrap: str, prefix: str) -> None:
    first = _cli("topics", "create", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created ") == 8
    again = _cli("topics", "create", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("exists ") == 8
    listing = _cli("topics", "list", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("1 partition(s)") == 8


def test_topics_list_asks_the_broker(kafka_bootstrap: str, prefix: str) -> None:
    listing = _cli("topics", "list", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("missing (stageroute topics create)") == 8


def test_publish_sends_good_lines_reports_bad_ones_and_exits_2(kafka_bootstrap: str,
                                                                prefix: str) -> None:
    _cli("topics", "create", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    lines = [
        b'{"type": "model_arrived", "model_id": "m1", "alpha": 0.5, "time": 0, "domain": "eu"}',
        b"not json",
        b"",
        b'{"type": "query", "query_id": "q1", "time": 1, "domain": "eu"}',
        b'{"type": "feedback", "query_id": "q1", "model_id": "m1", "reward": 1.5, '
        b'"cost": 0.1, "time": 2}',
    ]
    done = _cli("publish", "-", "--topic-mode", "typed", "--bootstrap", kafka_bootstrap,
                "--topic-prefix", prefix, stdin=b"\n".join(lines) + b"\n")
    assert done.returncode == 2
    assert json.loads(done.stdout) == {"sent": 2, "bad": 2}
    assert "-:2: malformed" in done.stderr
    assert "-:5: reward_out_of_range" in done.stderr
    names = topics.TopicNames(prefix)
    arrivals = _read(kafka_bootstrap, names.typed_inputs["model_arrived"])
    queries = _read(kafka_bootstrap, names.typed_inputs["query"])
    assert [a["model_id"] for a in arrivals] == ["m1"]
    assert [(q["query_id"], q["domain"]) for q in queries] == [("q1", "eu")]


def test_replay_publishes_a_log_in_order(kafka_bootstrap: str, prefix: str,
                                         tmp_path: Path) -> None:
    _cli("topics", "create", "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    log = synthetic_log(200, default_config())
    path = tmp_path / "log.jsonl.gz"
    write_event_log(path, log)
    done = _cli("replay", "--to-kafka", str(path), "--pace", "event-time", "--speed", "2000",
                "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    assert done.returncode == 0, done.stderr
    got = _read(kafka_bootstrap, topics.TopicNames(prefix).events)
    assert got == [e.model_dump(mode="json") for e in log]


def test_publish_before_topics_create_says_what_to_run(kafka_bootstrap: str, prefix: str,
                                                       tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"type": "query", "time": 1, "query_id": "q1"}\n')
    done = _cli("publish", str(events), "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{prefix}.events" in done.stderr and "stageroute topics create" in done.stderr

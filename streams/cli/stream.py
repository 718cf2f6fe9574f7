"""``stageroute topics | worker | publish | replay``: the streaming runtime's commands.

Options resolve as elsewhere: flag, then ``STAGEROUTE_<OPTION>`` (e.g. ``STAGEROUTE_BOOTSTRAP``,
``STAGEROUTE_DB_URL``, ``STAGEROUTE_RUN_ID``), then the ``--config`` file, then the default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streams.cli.parsing import SubParsers, add_command
from streams.cli.settings import (
    Options,
    ServiceUnavailable,
    UsageError,
    audit_store,
    output_file,
    positive_float,
    positive_int,
    text,
)

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"


PUBLISH_DESCRIPTION = """\
Validate input events and publish them to Kafka, keyed by their routing domain, with an
idempotent acks=all producer. Every line is checked first: a bad line is reported with its
line number and not sent, the good ones are, and the exit code is then 2.

JSONL (default): one event per line, as the JSON Schemas in schemas/json/ describe them, e.g.
  {"type": "model_arrived", "time": 0, "domain": "eu", "model_id": "gpt-4", "alpha": 0.5}
  {"type": "query", "time": 1, "domain": "eu", "query_id": "q1"}

CSV (--format csv): a header row naming event fields, one event per row; an empty cell is an
absent field; type, domain, model_id and query_id are text, any other cell is read as JSON
(numbers; an object for features or metadata). Fields by type:
  model_arrived   time, model_id, alpha; optional cost_min, cost_max (USD per query)
  model_expired   time, model_id
  stage_boundary  time, stage
  query           time, query_id (optional features, e.g. {"task": "mbpp"})
  feedback        time, query_id, model_id (the model it was routed to), reward in [0, 1],
                  cost (USD)
and domain (default "default") on every row. For example:
  type,time,domain,model_id,alpha,cost_min,cost_max,query_id,reward,cost,stage
  model_arrived,0,eu,gpt-4,0.5,0.001,0.03,,,,
  model_arrived,0,eu,mistral-7b,0.5,,,,,,
  stage_boundary,0,eu,,,,,,,,0
  query,1,eu,,,,,q1,,,
  feedback,2,eu,gpt-4,,,,q1,1,0.012,
  model_expired,3,eu,mistral-7b,,,,,,,
"""

WORKER_DESCRIPTION = """\
Consume every input topic, route with StageRoute per domain (each domain is a live run of its
own, named by --run-id and the domain), publish each decision to <prefix>.routing-decisions
at once, and commit journal, decisions and input positions to PostgreSQL in one transaction
per batch under the partition owner's fence. Run several workers with the same --run-id to
scale out over partitions. Serves /health and /metrics; database and broker outages are
waited out (health: degraded, HTTP 503). Stop with SIGTERM or Ctrl-C (engine state is
snapshotted); after a crash, restart with the same --run-id: nothing is lost or doubled.
Checks before it starts that the broker answers and the topics exist.

See the live run afterwards with: stageroute audit runs; stageroute audit verify RUN_NAME.
"""

REPLAY_DESCRIPTION = """\
Publish a historical event log (JSONL, .gz allowed, as written by --export or by
stageroute publish) to Kafka, or the journal of a recorded run (--from-run), so that a worker
replays it. With --export FILE.jsonl the run's journal is written to a file instead.

--pace max sends as fast as the broker takes them; --pace event-time sends each event when its
"time" field comes due, relative to the first event, at --speed times real time (time is
seconds: --speed 60 replays an hour of events in a minute).
"""


def add_parsers(sub: SubParsers[Any]) -> None:
    _topics_parser(sub)
    _worker_parser(sub)
    _publish_parser(sub)
    _replay_parser(sub)


def _bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (default "
                   f"{DEFAULT_BOOTSTRAP}, the port infra/kafka.sh uses; also "
                   "STAGEROUTE_BOOTSTRAP)")
    p.add_argument("--topic-prefix", metavar="PREFIX", help="topic names are PREFIX.events, "
                   "PREFIX.routing-decisions, ... (default stageroute)")


def _names(opts: Options) -> Any:
    from streams import topics

    return topics.TopicNames(opts.get("topic_prefix", text, topics.DEFAULT_PREFIX))


def _topics_parser(sub: SubParsers[Any]) -> None:
    p = add_command(sub, "topics", help="create or list the Kafka topics",
                    description="The input, output and dead-letter topics (streams/topics.py)."
                    " create: make the missing ones (idempotent). list: each topic, whether it "
                    "exists on the broker, and its partitions.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = add_command(actions, "create", help="create missing topics, leave existing ones")
    _bootstrap(create)
    create.add_argument("--partitions", metavar="N", help="partitions per topic (default 1)")
    create.add_argument("--replication", metavar="N", help="replication factor (default 1)")
    listing = add_command(actions, "list", help="the topics and their state on the broker")
    _bootstrap(listing)
    p.set_defaults(handler=_topics)


def _worker_parser(sub: SubParsers[Any]) -> None:
    p = add_command(sub, "worker", database=True, description=WORKER_DESCRIPTION,
                    help="run the live worker (faust or aiokafka): Kafka in, PostgreSQL audit, "
                         "decisions out")
    _bootstrap(p)
    p.add_argument("--engine-config", metavar="FILE.json", help="EngineConfig as JSON "
                   "(required), e.g. a run's: stageroute audit show RUN --json, key config")
    p.add_argument("--run-id", metavar="NAME", help="name of the live run; the same name "
                   "resumes it (required)")
    p.add_argument("--batch-size", metavar="N", help="records per batch/transaction at most "
                   "(default 2000)")
    p.add_argument("--batch-within", metavar="SECONDS", help="seconds to wait filling a batch "
                   "(default 0.02)")
    p.add_argument("--snapshot-every", metavar="N", help="events per domain between "
                   "snapshots (default 10000)")
    p.add_argument("--web-port", metavar="PORT", help="port of /health and /metrics (default "
                   "6066)")
    p.add_argument("--web-host", metavar="ADDR", help="address to bind /health and /metrics "
                   "(default 127.0.0.1)")
    p.add_argument("--group", metavar="ID", help="consumer group (default "
                   "stageroute-worker-<run-id>)")
    p.add_argument("--session-timeout", metavar="SECONDS", help="consumer group session "
                   "timeout (default 10; a killed worker's partitions move after this long)")
    p.add_argument("--stall-after", metavar="SECONDS", help="seconds without a commit while "
                   "input is pending after which /health reports degraded (default 60)")
    p.add_argument("--max-trail-lag", metavar="N", help="input records whose decisions may be "
                   "published before they are stored in the audit trail, at most (default "
                   "20000); past it the worker pauses consumption")
    p.add_argument("--max-trail-seconds", metavar="SECONDS", help="no record is applied while "
                   "the oldest published-but-unstored batch is older than this (default 5)")
    p.add_argument("--log-level", metavar="LEVEL", help="log level: debug, info (default), "
                   "warning, error")
    p.add_argument("--runtime", choices=["faust", "aiokafka"],
                   help="aiokafka: a plain consumer loop (default); faust: a faust-streaming "
                        "agent, same processing and commit order, ~2.5x slower here "
                        "(bench/RESULTS.md)")
    p.set_defaults(handler=_worker)


def _publish_parser(sub: SubParsers[Any]) -> None:
    p = add_command(sub, "publish", help="validate events and publish them to Kafka",
                    description=PUBLISH_DESCRIPTION)
    p.add_argument("source", nargs="?", default="-", metavar="FILE",
                   help="FILE, or - for stdin (default -)")
    p.add_argument("--format", choices=["jsonl", "csv"], help="default jsonl")
    p.add_argument("--topic-mode", choices=["typed", "single"],
                   help="single: everything on stageroute.events, one exact order (default); "
                        "typed: one topic per event type, no order across types")
    _bootstrap(p)
    p.set_defaults(handler=_publish)


def _replay_parser(sub: SubParsers[Any]) -> None:
    p = add_command(sub, "replay", database=True, description=REPLAY_DESCRIPTION,
                    help="publish an event log, or a recorded run's journal, to Kafka")
    p.add_argument("--to-kafka", metavar="LOG", nargs="?", const="",
                   help="publish LOG (JSONL, .gz ok) to Kafka; with --from-run, no LOG")
    p.add_argument("--from-run", metavar="RUN", help="use this run's journal as the log (a "
                   "run id, a unique prefix, or a live run's name)")
    p.add_argument("--domain", help="with --from-run: the domain, when a live run's name has "
                                    "runs in several")
    p.add_argument("--export", metavar="FILE.jsonl",
                   help="with --from-run: write the journal as a JSONL event log instead")
    p.add_argument("--pace", choices=["max", "event-time"], help="max: as fast as possible "
                   "(default); event-time: follow the events' time field (see above)")
    p.add_argument("--speed", metavar="X", help="with --pace event-time: X times real time "
                   "(default 1)")
    p.add_argument("--topic-mode", choices=["typed", "single"], help="as for publish "
                   "(default single)")
    _bootstrap(p)
    p.set_defaults(handler=_replay)


# --- handlers ---------------------------------------------------------------------------------


def _topics(opts: Options) -> int:
    from streams import topics

    bootstrap = opts.get("bootstrap", text, DEFAULT_BOOTSTRAP)
    if opts.flags["action"] == "list":
        present = _service(lambda: topics.describe(bootstrap), bootstrap)
        names = _names(opts)
        width = max(len(n) for n in names.all)
        for name in names.all:
            state = (f"{present[name]} partition(s)" if name in present
                     else "missing (stageroute topics create)")
            print(f"{name.ljust(width)}  {state}")
        return 0
    partitions = opts.get("partitions", positive_int, 1)
    replication = opts.get("replication", positive_int, 1)
    created, existing = _service(lambda: topics.create_topics(
        bootstrap, topics.specs(partitions, replication, _names(opts))), bootstrap)
    for name in created:
        print(f"created {name}")
    for name in existing:
        print(f"exists  {name}")
    return 0


def _worker(opts: Options) -> int:
    from pydantic import ValidationError

    from stageroute.engine import EngineConfig
    from streams.live.settings import WorkerSettings

    path = opts.get("engine_config", text, None)
    run_name = opts.get("run_id", text, None)
    if path is None or run_name is None:
        raise UsageError("--engine-config and --run-id are required")
    try:
        config = EngineConfig.model_validate_json(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--engine-config {path}: cannot read ({exc.strerror})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--engine-config {path}: {'.'.join(map(str, first['loc']))}: "
                         f"{first['msg']} ({exc.error_count()} error(s))") from None
    bootstrap = _ready_broker(opts)
    store = audit_store(opts)
    settings = WorkerSettings(
        bootstrap=bootstrap,
        db_url=str(store.engine.url), run_name=run_name, config=config,
        batch_size=opts.get("batch_size", positive_int, 2000),
        batch_within=opts.get("batch_within", positive_float, 0.02),
        snapshot_every=opts.get("snapshot_every", positive_int, 10_000),
        web_host=opts.get("web_host", text, "127.0.0.1"),
        web_port=opts.get("web_port", positive_int, 6066),
        group=opts.get("group", text, None), topic_prefix=_names(opts).prefix,
        session_timeout=opts.get("session_timeout", positive_float, 10.0),
        stall_after=opts.get("stall_after", positive_float, 60.0),
        max_lag_records=opts.get("max_trail_lag", positive_int, 20_000),
        max_lag_seconds=opts.get("max_trail_seconds", positive_float, 5.0))
    runtime = opts.get("runtime", text, "aiokafka")
    _check_choice("--runtime", runtime, ("faust", "aiokafka"))
    if runtime == "aiokafka":
        from streams.live.lean import run_lean

        run_lean(settings, store)
    else:
        from streams.live.app import run_worker

        run_worker(settings, store, loglevel=opts.get("log_level", text, "info"))
    return 0


def _publish(opts: Options) -> int:
    from streams import publisher

    source = opts.flags.get("source") or "-"
    fmt = opts.get("format", text, "jsonl")
    mode = opts.get("topic_mode", text, "single")
    _check_choice("--format", fmt, ("jsonl", "csv"))
    _check_choice("--topic-mode", mode, ("typed", "single"))
    try:
        handle = publisher.open_input(source)
    except OSError as exc:
        raise UsageError(f"{source}: cannot read ({exc.strerror})") from None
    bootstrap = _ready_broker(opts)
    producer = _service(lambda: publisher.make_producer(bootstrap), bootstrap)
    try:
        with handle:
            items = publisher.read_csv(handle) if fmt == "csv" else publisher.read_jsonl(handle)
            report = publisher.publish(producer, items, mode, names=_names(opts))
    finally:
        producer.close()
    return _report(report, source)


def _replay(opts: Options) -> int:
    from streams import publisher
    from streams.eventlog import load_event_log

    run_ref = opts.flags.get("from_run")
    export = opts.get("export", output_file(".jsonl", ".jsonl.gz"), None) \
        if opts.flags.get("export") else None
    log = opts.flags.get("to_kafka")
    mode = opts.get("topic_mode", text, "single")
    pace = opts.get("pace", text, "max")
    speed = opts.get("speed", positive_float, 1.0)
    _check_choice("--pace", pace, ("max", "event-time"))
    if export and not run_ref:
        raise UsageError("--export needs --from-run RUN")
    if run_ref:
        from streams.cli.audit import find_run

        store = audit_store(opts)
        run_id = find_run(store, Options({**opts.flags, "run": run_ref}, opts.config,
                                         opts.environ))["run_id"]
        if export:
            count = publisher.export_journal(store, run_id, export)
            print(f"wrote {count} events to {export}")
            return 0
        if log is None:
            raise UsageError("--from-run needs --to-kafka or --export FILE.jsonl")
        items: Any = publisher.journal_events(store, run_id)
        source = f"run {run_id}"
    else:
        if not log:
            raise UsageError("give --to-kafka LOG, or --from-run RUN")
        items = ((n, e if not isinstance(e, Exception) else _raw(e))
                 for n, e in load_event_log(log))
        source = log
    bootstrap = _ready_broker(opts)
    producer = _service(lambda: publisher.make_producer(bootstrap), bootstrap)
    pacer = publisher.EventTimePacer(speed) if pace == "event-time" else None
    try:
        report = publisher.publish(producer, _as_payloads(items), mode, pace=pacer,
                                   names=_names(opts))
    finally:
        producer.close()
    return _report(report, source)


def _as_payloads(items: Any) -> Any:
    from pydantic import BaseModel

    for number, item in items:
        yield number, (item.model_dump(mode="json") if isinstance(item, BaseModel) else item)


def _raw(rejected: Any) -> str:
    return str(rejected.payload)


def _report(report: Any, source: str) -> int:
    for number, rejected in report.bad:
        print(f"{source}:{number}: {rejected}", file=sys.stderr)
    print(json.dumps({"sent": report.sent, "bad": len(report.bad)}))
    return 2 if report.bad else 0


def _check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")


def _ready_broker(opts: Options) -> str:
    """The bootstrap address, once the broker answered (within seconds, else exit 3) and
    has every topic (else exit 2, naming the missing ones)."""
    from streams import topics

    bootstrap = opts.get("bootstrap", text, DEFAULT_BOOTSTRAP)
    present = _service(lambda: topics.describe(bootstrap), bootstrap)
    missing = [n for n in _names(opts).all if n not in present]
    if missing:
        raise UsageError(f"topics missing on the broker at {bootstrap}: {', '.join(missing)} "
                         "(run: stageroute topics create)")
    return str(bootstrap)


def _service(call: Any, bootstrap: str) -> Any:
    from kafka.errors import KafkaError

    try:
        return call()
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka unavailable at {bootstrap} (--bootstrap, "
                                 f"STAGEROUTE_BOOTSTRAP): {exc}") from None

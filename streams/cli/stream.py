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

from streams.cli.settings import (
    Options,
    UsageError,
    positive_float,
    positive_int,
    text,
)

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
EXIT_SERVICE = 3


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _topics_parser(sub)
    _worker_parser(sub)
    _publish_parser(sub)
    _replay_parser(sub)


def _bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help=f"Kafka bootstrap servers (default {DEFAULT_BOOTSTRAP}; "
                                       "also STAGEROUTE_BOOTSTRAP)")
    p.add_argument("--topic-prefix", help="topic names are PREFIX.events, ... (default "
                                          "stageroute)")


def _names(opts: Options) -> Any:
    from streams import topics

    return topics.TopicNames(opts.get("topic_prefix", text, topics.DEFAULT_PREFIX))


def _topics_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("topics", help="create the Kafka topics (idempotent)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create missing topics, leave existing ones")
    _bootstrap(create)
    create.add_argument("--partitions", help="partitions per topic (default 1)")
    create.add_argument("--replication", help="replication factor (default 1)")
    names = actions.add_parser("list", help="print the topic names")
    names.add_argument("--topic-prefix", help="default stageroute")
    p.set_defaults(handler=_topics)


def _worker_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker", help="run the live worker (faust): Kafka in, Postgres audit, decisions out",
        description="Consume every input topic, route with StageRoute per domain, publish "
                    "decisions at once and commit journal+decisions+positions to Postgres in "
                    "one transaction per batch under the partition owner's fence. Run several "
                    "with the same --run-id to scale out over partitions. Serves /health and "
                    "/metrics; database and broker outages are waited out (health: degraded). "
                    "After a crash, restart with the same --run-id.")
    _bootstrap(p)
    p.add_argument("--engine-config", help="EngineConfig as a JSON file (required)")
    p.add_argument("--run-id", help="name of the live run; the same name resumes it "
                                    "(required)")
    p.add_argument("--db-url", help="audit database URL (default STAGEROUTE_DB_URL, else "
                                    "embedded PostgreSQL)")
    p.add_argument("--batch-size", help="records per batch/transaction at most (default 2000)")
    p.add_argument("--batch-within", help="seconds to wait filling a batch (default 0.02)")
    p.add_argument("--snapshot-every", help="events per domain between snapshots (default "
                                            "10000)")
    p.add_argument("--web-port", help="port of /health and /metrics (default 6066)")
    p.add_argument("--web-host", help="address to bind /health and /metrics (default "
                                      "127.0.0.1)")
    p.add_argument("--group", help="consumer group (default stageroute-worker-<run-id>)")
    p.add_argument("--session-timeout", help="consumer group session timeout in seconds "
                                             "(default 10; a killed worker's partitions move "
                                             "after this long)")
    p.add_argument("--stall-after", help="seconds without a commit while input is pending "
                                         "after which /health reports degraded (default 60)")
    p.add_argument("--log-level", help="faust log level (default info)")
    p.add_argument("--runtime", choices=["faust", "aiokafka"],
                   help="faust: a faust-streaming agent (default); aiokafka: a plain consumer "
                        "loop, same processing and commit order, less per-record overhead")
    p.set_defaults(handler=_worker)


def _publish_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help="validate events and publish them to Kafka",
                       description="Exit 2 if any line is invalid (reported with its line "
                                   "number; the valid lines are still sent).")
    p.add_argument("source", nargs="?", default="-", help="FILE or - for stdin (default -)")
    p.add_argument("--format", choices=["jsonl", "csv"], help="default jsonl")
    p.add_argument("--topic-mode", choices=["typed", "single"],
                   help="typed: one topic per event type; single: everything on "
                        "stageroute.events, one exact order (default single)")
    _bootstrap(p)
    p.set_defaults(handler=_publish)


def _replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="publish a historical event log (or a run's journal)")
    p.add_argument("--to-kafka", metavar="LOG", nargs="?", const="",
                   help="publish LOG (JSONL, .gz ok) to Kafka; with --from-run, no LOG")
    p.add_argument("--from-run", metavar="RUN", help="use this run's journal as the log")
    p.add_argument("--export", metavar="FILE.jsonl",
                   help="with --from-run: write the journal as a JSONL event log instead")
    p.add_argument("--pace", choices=["max", "event-time"], help="default max")
    p.add_argument("--speed", help="with --pace event-time: x event-time speed (default 1)")
    p.add_argument("--topic-mode", choices=["typed", "single"], help="default single")
    p.add_argument("--db-url", help="audit database URL (for --from-run)")
    _bootstrap(p)
    p.set_defaults(handler=_replay)


# --- handlers ---------------------------------------------------------------------------------


def _topics(opts: Options) -> int:
    from streams import topics

    if opts.flags["action"] == "list":
        print("\n".join(_names(opts).all))
        return 0
    bootstrap = opts.get("bootstrap", text, DEFAULT_BOOTSTRAP)
    partitions = opts.get("partitions", positive_int, 1)
    replication = opts.get("replication", positive_int, 1)
    created, existing = _service(lambda: topics.create_topics(
        bootstrap, topics.specs(partitions, replication, _names(opts))))
    for name in created:
        print(f"created {name}")
    for name in existing:
        print(f"exists  {name}")
    return 0


def _worker(opts: Options) -> int:
    from pydantic import ValidationError

    from stageroute.engine import EngineConfig
    from streams.audit.recorder import open_store
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
        raise UsageError(f"--engine-config {path}: {exc}") from None
    db_url = opts.get("db_url", text, None)
    store = open_store(db_url)
    settings = WorkerSettings(
        bootstrap=opts.get("bootstrap", text, DEFAULT_BOOTSTRAP),
        db_url=str(store.engine.url), run_name=run_name, config=config,
        batch_size=opts.get("batch_size", positive_int, 2000),
        batch_within=opts.get("batch_within", positive_float, 0.02),
        snapshot_every=opts.get("snapshot_every", positive_int, 10_000),
        web_host=opts.get("web_host", text, "127.0.0.1"),
        web_port=opts.get("web_port", positive_int, 6066),
        group=opts.get("group", text, None), topic_prefix=_names(opts).prefix,
        session_timeout=opts.get("session_timeout", positive_float, 10.0),
        stall_after=opts.get("stall_after", positive_float, 60.0))
    runtime = opts.get("runtime", text, "faust")
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
    producer = _service(lambda: publisher.make_producer(
        opts.get("bootstrap", text, DEFAULT_BOOTSTRAP)))
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

    run_id = opts.flags.get("from_run")
    export = opts.flags.get("export")
    log = opts.flags.get("to_kafka")
    mode = opts.get("topic_mode", text, "single")
    pace = opts.get("pace", text, "max")
    speed = opts.get("speed", positive_float, 1.0)
    _check_choice("--pace", pace, ("max", "event-time"))
    if run_id:
        from streams.audit.recorder import open_store

        store = open_store(opts.get("db_url", text, None))
        if store.get_run(run_id) is None:
            raise UsageError(f"no run {run_id!r} (see: stageroute audit runs)")
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
    producer = _service(lambda: publisher.make_producer(
        opts.get("bootstrap", text, DEFAULT_BOOTSTRAP)))
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


def _service(call: Any) -> Any:
    from kafka.errors import KafkaError

    try:
        return call()
    except KafkaError as exc:
        print(f"stageroute: Kafka unavailable: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_SERVICE) from None

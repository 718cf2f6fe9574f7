"""``stageroute audit``: read the decision audit trail; ``verify`` proves it."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from streams.cli.settings import Options, UsageError, non_negative_int, positive_int, text


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit", help="list runs, show decisions, export, verify",
        description="Query the audit database (--db-url, STAGEROUTE_DB_URL, or the embedded "
                    "default under ./.stageroute).")
    p.add_argument("--db-url", help="SQLAlchemy URL of the audit database")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("runs", help="list runs, newest first")
    show = actions.add_parser("show", help="a run's config and summary")
    show.add_argument("run_id")
    dec = actions.add_parser("decisions", help="routing decisions of a run (or a query/stage)")
    dec.add_argument("run_id")
    dec.add_argument("--query", help="only this query id")
    dec.add_argument("--stage", help="only this stage")
    dec.add_argument("--deployments", action="store_true", help="deployment decisions instead")
    dec.add_argument("--limit", help="at most this many rows (default 50)")
    exp = actions.add_parser("export", help="write a run's decisions to CSV")
    exp.add_argument("run_id")
    exp.add_argument("--to", required=True, help="CSV file to write")
    exp.add_argument("--what", choices=["routing", "deployments", "journal", "dead_letters"],
                     default="routing")
    ver = actions.add_parser(
        "verify", help="re-derive every decision and replay the journal; exit 1 on mismatch")
    ver.add_argument("run_id")
    p.set_defaults(handler=run_command)


def run_command(opts: Options) -> int:
    from streams.audit.recorder import open_store

    store = open_store(opts.get("db_url", text, None))
    action = opts.flags["action"]
    if action == "runs":
        return _runs(store)
    run = store.get_run(opts.flags["run_id"])
    if run is None:
        raise UsageError(f"no run {opts.flags['run_id']!r} (see: stageroute audit runs)")
    if action == "show":
        print(json.dumps(run, indent=2, default=str))
        return 0
    if action == "decisions":
        return _decisions(store, run, opts)
    if action == "export":
        return _export(store, run, opts.flags["what"], Path(opts.flags["to"]))
    return _verify(store, run)


def _runs(store: Any) -> int:
    runs = store.list_runs()
    if not runs:
        print("no runs yet (run: stageroute backtest)")
    for r in runs:
        summary = r.get("summary") or {}
        print(f"{r['run_id']}  {r['kind']:8s} {r['policy']:15s} {str(r['created_at'])[:19]}  "
              f"{r['status']:9s} queries={summary.get('queries', '-')} "
              f"avg_reward={summary.get('avg_reward', '-')}")
    return 0


def _decisions(store: Any, run: dict[str, Any], opts: Options) -> int:
    limit = opts.get("limit", positive_int, 50)
    if opts.flags.get("deployments"):
        rows = store.deployment_decisions(run["run_id"])
    else:
        stage = opts.get("stage", non_negative_int, None)
        rows = store.routing_decisions(run["run_id"], query_id=opts.flags.get("query"),
                                       stage=stage)
    shown = 0
    for row in rows:
        if shown == limit:
            print(f"... (more; raise --limit or use: stageroute audit export {run['run_id']})")
            break
        print(json.dumps(row, default=str))
        shown += 1
    if not shown:
        print("no matching decisions")
    return 0


def _export(store: Any, run: dict[str, Any], what: str, target: Path) -> int:
    rows = {
        "routing": lambda: store.routing_decisions(run["run_id"]),
        "deployments": lambda: store.deployment_decisions(run["run_id"]),
        "journal": lambda: ({"seq": s, "event": e} for s, e in store.journal(run["run_id"])),
        "dead_letters": lambda: store.dead_letters(run["run_id"]),
    }[what]()
    count = 0
    with target.open("w", newline="") as handle:
        writer: csv.DictWriter[str] | None = None
        for row in rows:
            flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else v
                    for k, v in row.items()}
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(flat))
                writer.writeheader()
            writer.writerow(flat)
            count += 1
    print(f"wrote {count} {what} rows to {target}")
    return 0


def _verify(store: Any, run: dict[str, Any]) -> int:
    from stageroute.engine import EngineConfig
    from stageroute.verify import verify

    run_id = run["run_id"]
    report = verify(EngineConfig.model_validate(run["config"]), store.journal(run_id),
                    store.routing_decisions(run_id), store.deployment_decisions(run_id))
    print(f"run {run_id}: {report.routing_checked} routing and {report.deployments_checked} "
          f"deployment decisions re-derived, {report.events_replayed} journal events replayed")
    if report.ok and report.not_replayed:
        print(f"re-derived: 0 mismatches; journal NOT replayed: {report.not_replayed}")
        return 0
    if report.ok:
        print("verified: 0 mismatches")
        return 0
    for problem in report.mismatches:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print(f"{len(report.mismatches)} mismatch(es)", file=sys.stderr)
    return 1

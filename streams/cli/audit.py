"""``stageroute audit``: read the decision audit trail; ``verify`` proves it."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from streams.cli.parsing import SubParsers, add_command
from streams.cli.settings import (
    Options,
    UsageError,
    audit_store,
    non_negative_int,
    output_file,
    positive_int,
    text,
)

RUN_HELP = ("a run id, a unique prefix of one (e.g. its first 8 characters), or a live run's "
            "name (its --run-id)")


def add_parser(sub: SubParsers[Any]) -> None:
    p = add_command(
        sub, "audit", database=True, help="list runs, show decisions, export, verify",
        description="Query the audit database: --db-url, STAGEROUTE_DB_URL, or the embedded "
                    "per-user database (see: stageroute db info). RUN is " + RUN_HELP + ".")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    runs = add_command(actions, "runs", database=True, help="list runs, newest first")
    runs.add_argument("--limit", metavar="N", help="at most N runs (default 50)")
    runs.add_argument("--backtest", metavar="ID", help="only the runs of this backtest command "
                      "(its id, or a prefix, as the backtest printed it)")
    runs.add_argument("--json", action="store_true", help="one JSON document (a list)")
    show = _with_run(add_command(actions, "show", database=True,
                                 help="a run's name, config and summary"))
    show.add_argument("--json", action="store_true", help="the whole run record as JSON")
    show.add_argument("--engine-config", action="store_true", help="only the run's engine "
                      "configuration, as JSON (what worker --engine-config takes)")
    dec = _with_run(add_command(actions, "decisions", database=True,
                                help="routing decisions of a run (or a query/stage), as JSON "
                                     "lines"))
    dec.add_argument("--query", metavar="Q", help="only this query id")
    dec.add_argument("--stage", metavar="K", help="only this stage")
    dec.add_argument("--deployments", action="store_true",
                     help="deployment decisions instead")
    dec.add_argument("--limit", metavar="N", help="at most N rows (default 50)")
    exp = _with_run(add_command(actions, "export", database=True,
                                help="write a run's decisions, journal or dead letters to CSV"))
    exp.add_argument("--to", metavar="FILE.csv", required=True, help="CSV file to write")
    exp.add_argument("--what", choices=["routing", "deployments", "journal", "dead_letters"],
                     default="routing", help="which table (default routing)")
    _with_run(add_command(
        actions, "verify", database=True,
        help="re-derive every decision and replay the journal; exit 1 on a mismatch"))
    p.set_defaults(handler=run_command)


def _with_run(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--domain", help="the routing domain, when a live run's name has runs in "
                                    "several")
    return p


def run_command(opts: Options) -> int:
    store = audit_store(opts)
    action = opts.flags["action"]
    if action == "runs":
        return _runs(store, opts)
    target = opts.get("to", output_file(".csv"), None) if action == "export" else None
    run = find_run(store, opts)
    if action == "show":
        if opts.flags.get("engine_config"):
            print(json.dumps(run["config"]))
            return 0
        return _show(run, bool(opts.flags.get("json")))
    if action == "decisions":
        return _decisions(store, run, opts)
    if action == "export":
        return _export(store, run, opts.flags["what"], target)
    return _verify(store, run)


def find_run(store: Any, opts: Options) -> dict[str, Any]:
    """The run RUN (and --domain) name; a usage error if none or several match."""
    from streams.audit.store import RunNotFound

    try:
        run: dict[str, Any] = store.find_run(opts.flags["run"], opts.get("domain", text, None))
    except RunNotFound as exc:
        raise UsageError(str(exc)) from None
    return run


def _runs(store: Any, opts: Options) -> int:
    runs = store.list_runs(opts.get("limit", positive_int, 50),
                           opts.get("backtest", text, None))
    if opts.flags.get("json"):
        print(json.dumps(runs, indent=2, default=str))
        return 0
    if not runs:
        print("no runs yet (run: stageroute backtest)")
        return 0
    print(f"{'run':8}  {'created (UTC)':19}  {'kind':8}  {'name / backtest':17}  "
          f"{'domain':10}  {'policy':14}  {'seed':>4}  {'status':11}  {'queries':>9}  "
          f"{'reward':>7}  {'% oracle':>8}")
    for r in runs:
        summary = r.get("summary") or {}
        label = r["name"] or (f"backtest {r['invocation_id'][:8]}" if r["invocation_id"]
                              else "-")
        print(f"{r['run_id'][:8]}  {_utc(r['created_at'])}  {r['kind']:8}  {label:17}  "
              f"{r['domain']:10}  {r['policy']:14}  {r['seed']:>4}  {r['status']:11}  "
              f"{_num(summary.get('queries'), '{:,}'):>9}  "
              f"{_num(summary.get('avg_reward'), '{:.4f}'):>7}  "
              f"{_num(summary.get('pct_of_oracle'), '{:.1f}'):>8}")
    return 0


def _utc(moment: Any) -> str:
    from datetime import UTC

    return str(moment.astimezone(UTC))[:19]


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _show(run: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(run, indent=2, default=str))
        return 0
    summary = run.get("summary") or {}
    lines = [("run", run["run_id"]), ("name", run["name"] or "-"), ("kind", run["kind"]),
             ("domain", run["domain"]), ("policy", run["policy"]), ("seed", run["seed"]),
             ("status", run["status"] + _status_note(run)),
             ("created", _utc(run["created_at"]) + " UTC"),
             ("finished", _utc(run["finished_at"]) + " UTC" if run["finished_at"] else "-")]
    if run["invocation_id"]:
        lines.append(("backtest", run["invocation_id"]))
    for key in ("data", "scenario", "horizon", "stages", "order", "feedback_delay", "budget",
                "queries", "avg_reward", "avg_cost", "budget_use", "oracle_avg_reward",
                "pct_of_oracle", "regret", "decision_status", "dead_letters",
                "warning_count"):
        if key in summary:
            lines.append((key, summary[key]))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        print(f"{key.ljust(width)}  {shown}")
    print(f"{'config'.ljust(width)}  {json.dumps(run['config'])}")
    return 0


def _status_note(run: dict[str, Any]) -> str:
    if run["status"] == "interrupted":
        return " (stopped early: the trail is incomplete)"
    if run["status"] == "running" and run["kind"] == "backtest":
        return " (still running, or its process was killed)"
    return ""


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
            print(f"... (more; raise --limit or use: stageroute audit export "
                  f"{run['run_id'][:8]} --to FILE.csv)", file=sys.stderr)
            break
        print(json.dumps(row, default=str))
        shown += 1
    if not shown:
        print("no matching decisions", file=sys.stderr)
    return 0


def _export(store: Any, run: dict[str, Any], what: str, target: Any) -> int:
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
    incomplete = _status_note(run)
    if incomplete:
        print(f"note: run is {run['status']}{incomplete}; what is stored was verified")
    if report.ok and report.not_replayed:
        print(f"re-derived: 0 mismatches; journal NOT replayed: {report.not_replayed}")
        return 0
    if report.ok:
        print("verified: 0 mismatches" + (" (incomplete run)" if incomplete else ""))
        return 0
    for problem in report.mismatches:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print(f"{len(report.mismatches)} mismatch(es)", file=sys.stderr)
    return 1

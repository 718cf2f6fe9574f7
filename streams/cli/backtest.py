"""``stageroute backtest``: replay a reward table through the engine for several policies."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stageroute.backtest.driver import Stream, iid_rows
from stageroute.backtest.feasibility import SettingWarning, check_settings
from stageroute.backtest.runner import RunResult
from stageroute.backtest.scenario import Scenario, ScenarioError, all_live, parse_schedule
from stageroute.backtest.seeds import aggregate
from stageroute.engine import EngineConfig
from stageroute.policies import POLICIES
from streams.backtest import default_jobs
from streams.cli.parsing import SubParsers, add_command
from streams.cli.settings import (
    Options,
    UsageError,
    database_url,
    flag,
    non_negative_int,
    output_file,
    positive_float,
    share,
    text,
    whole,
)
from streams.data import BUNDLED_TABLE, DEFAULT_SCHEDULE
from streams.tables import RewardTable, load_table

DEFAULT_POLICIES = "stageroute,greedy,random"
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_GAMMA = EngineConfig.model_fields["gamma"].default
ORACLES = ("oracle", "contextual_oracle")
MAX_HORIZON = 100_000_000  # 16 bytes per query and run are kept for the curves
MAX_SEEDS = 100

DESCRIPTION = """\
Replay a RouterBench-format table as a query stream: queries are table rows drawn i.i.d.
with the seed (or in table order), models arrive and retire on a schedule, stages start at
K = ceil(T^(1/3)) equal intervals, and each policy's choice gets that row's score and cost as
feedback. Prints one row per policy against the oracle, which knows the true means and obeys
the same limits, as the mean and standard deviation over the seeds (3 by default: 0, 1, 2).
When the table has tasks (eval_name), queries carry them and the contextual oracle (true
means per task and model, same limits) runs too; "% ctx oracle" is against it.
Every event and decision is written to the audit database unless --no-audit.

Budget convention: the per-query budget is beta times the highest mean per-query cost among
the table's models (USD).

Settings that cannot be met (shares summing below 1, a budget below what the live models
cost) are warned about before the runs start and counted in the summary.
"""


def add_parser(sub: SubParsers[Any]) -> None:
    p = add_command(sub, "backtest", database=True, description=DESCRIPTION,
                    help="replay a reward table through StageRoute and baselines")
    p.add_argument("--data", metavar="FILE", help="table: .csv, .csv.gz or .parquet (default: "
                   "the bundled RouterBench subset, 2,225 prompts x 11 models)")
    p.add_argument("--scenario", metavar="FILE", help="JSON arrival/expiry schedule (default: "
                   "the bundled release-order schedule when the models match it, else all "
                   "models live)")
    p.add_argument("--horizon", metavar="T", help="queries per run (default 20000)")
    p.add_argument("--order", choices=["iid", "table"], help="iid: rows drawn with "
                   "replacement using the seed (default); table: rows in file order, cycled")
    p.add_argument("--stages", metavar="K", help="number of stages (default ceil(T^(1/3)))")
    p.add_argument("--m-max", metavar="M", help="models deployed at once (default 4)")
    p.add_argument("--beta", metavar="B", help="budget as a fraction of the highest mean "
                   "model cost (default 0.3)")
    p.add_argument("--budget", metavar="USD", help="budget in USD per query (instead of "
                   "--beta)")
    p.add_argument("--prices", choices=["known", "unknown"],
                   help="known (default): each model arrives with its list price, its mean "
                   "cost in the table, as the prior of its cost; unknown: costs are learned "
                   "from feedback (the paper's setting), each model's first query being a "
                   "probe of unknown cost")
    p.add_argument("--alpha", metavar="A", help="throughput share of every model (default "
                   "2 / m_max, capped at 1): a model may take at most twice its fair share")
    p.add_argument("--gamma", metavar="G",
                   help=f"confidence level in the radius (default {DEFAULT_GAMMA})")
    p.add_argument("--seed", metavar="S", help="run one seed, S (the query draw and every "
                   "routing draw); see --seeds")
    p.add_argument("--seeds", metavar="N|LIST", help="run several seeds: N (0 to N-1) or a "
                   "comma-separated list (default 0,1,2); figures are mean and standard "
                   "deviation over them")
    p.add_argument("--jobs", metavar="J", help="worker processes (default: one per CPU, at "
                   "most 4)")
    p.add_argument("--feedback-delay", metavar="D", help="queries between a query and its "
                   "feedback (default 0)")
    p.add_argument("--no-pacing", action="store_const", const=True, default=None,
                   dest="no_pacing", help="route every query with the nominal budget (no "
                   "budget ledger): realised spend may then exceed the budget")
    p.add_argument("--policies", metavar="LIST", help="comma-separated, from: "
                   f"{', '.join(sorted(set(POLICIES) - set(ORACLES)))} (default "
                   f"{DEFAULT_POLICIES}; the oracle always runs, and the contextual oracle "
                   "when the data has tasks)")
    p.add_argument("--json", metavar="FILE.json", help="write the summary as JSON here")
    p.add_argument("--report", metavar="FILE.html", help="write a self-contained interactive "
                   "HTML report here (regret, deployments, spend, reward over time)")
    p.add_argument("--no-audit", action="store_const", const=True, default=None,
                   help="do not write the audit trail")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(handler=run_command)


@dataclass(frozen=True)
class Plan:
    table: RewardTable
    scenario: Scenario
    streams: dict[int, Stream]
    configs: dict[int, EngineConfig]
    policies: list[str]
    seeds: list[int]
    beta: float
    order: str
    feedback_delay: int
    schedule_source: str
    prices: str
    warnings: list[SettingWarning]
    json_path: Path | None
    report_path: Path | None
    jobs: int

    @property
    def config(self) -> EngineConfig:
        return self.configs[self.seeds[0]]


def plan(opts: Options) -> Plan:
    """Validate every option and input file before anything runs."""
    json_path = opts.get("json", output_file(".json"), None)
    report_path = opts.get("report", output_file(".html", ".htm"), None)
    data = opts.get("data", text, None)
    horizon = opts.get("horizon", whole(1, MAX_HORIZON), 20_000)
    stages = opts.get("stages", whole(1), None)
    m_max = opts.get("m_max", whole(1), 4)
    beta = opts.get("beta", positive_float, None)
    budget_usd = opts.get("budget", positive_float, None)
    if beta is not None and budget_usd is not None:
        raise UsageError("--beta and --budget: give one of them, not both")
    prices = opts.get("prices", text, "known")
    if prices not in ("known", "unknown"):
        raise UsageError(f"--prices: expected known or unknown, got {prices!r}")
    alpha = opts.get("alpha", share, min(1.0, 2.0 / m_max))
    gamma = opts.get("gamma", positive_float, DEFAULT_GAMMA)
    seeds = _seeds(opts)
    delay = opts.get("feedback_delay", non_negative_int, 0)
    order = opts.get("order", text, "iid")
    if order not in ("iid", "table"):
        raise UsageError(f"--order: expected iid or table, got {order!r}")
    names = [n.strip() for n in opts.get("policies", text, DEFAULT_POLICIES).split(",")
             if n.strip()]
    unknown = [n for n in names if n not in POLICIES or n in ORACLES]
    if unknown or not names:
        raise UsageError(f"--policies: unknown {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(sorted(set(POLICIES) - set(ORACLES)))}")
    if len(set(names)) != len(names):
        raise UsageError(f"--policies: {','.join(names)} names a policy twice")
    jobs = opts.get("jobs", whole(1, 64), default_jobs(len(seeds) * (len(names) + 2)))
    table = load_table(data or BUNDLED_TABLE)
    try:
        scenario, source = _scenario(opts.get("scenario", text, None), table, horizon, stages)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    mean_cost = table.mean_cost()
    if not np.isfinite(mean_cost).any():
        raise UsageError(f"{table.source}: no model has a cost")
    dearest = float(np.nanmax(mean_cost))
    if budget_usd is None:
        beta = 0.3 if beta is None else beta
        budget_usd = beta * dearest
    else:
        beta = budget_usd / dearest
    base = EngineConfig(
        m_max=m_max, budget=budget_usd, gamma=gamma,
        cost_ceiling=float(np.nanmax(table.costs)), seed=seeds[0],
        budget_control=not opts.get("no_pacing", flag, False))
    costs = {m: float(c) for m, c in zip(table.models, mean_cost) if np.isfinite(c)}
    list_prices = None if prices == "unknown" else costs
    streams, configs = {}, {}
    for seed in seeds:
        rows = (iid_rows(table.n_rows, horizon, seed) if order == "iid"
                else np.arange(horizon) % table.n_rows)
        streams[seed] = Stream(rows, scenario, alpha, list_prices, delay)
        configs[seed] = base.model_copy(update={"seed": seed})
    warnings = check_settings(scenario, costs, m_max=m_max, budget=base.budget,
                              default_alpha=alpha)
    return Plan(table, scenario, streams, configs, names, seeds, beta, order, delay, source,
                prices, warnings, json_path, report_path, jobs)


def _seeds(opts: Options) -> list[int]:
    seed = opts.get("seed", non_negative_int, None)
    raw = opts.get("seeds", text, None)
    if seed is not None and raw is not None:
        raise UsageError("--seed and --seeds: give one of them, not both")
    if seed is not None:
        return [seed]
    if raw is None:
        return list(DEFAULT_SEEDS)
    parts = [p.strip() for p in str(raw).split(",") if p.strip()]
    if len(parts) == 1 and "," not in str(raw):
        return list(range(whole(1, MAX_SEEDS)(parts[0], "--seeds")))
    seeds = [non_negative_int(p, "--seeds") for p in parts]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: expected N or distinct seeds a,b,c, got {raw!r}")
    return seeds


def _scenario(path: str | None, table: RewardTable, horizon: int,
              stages: int | None) -> tuple[Scenario, str]:
    if path is not None:
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as exc:
            raise UsageError(f"--scenario {path}: cannot read ({exc.strerror})") from None
        except ValueError as exc:
            raise UsageError(f"--scenario {path}: not valid JSON ({exc})") from None
        return parse_schedule(doc, table.models, horizon, path, stages), path
    doc = json.loads(DEFAULT_SCHEDULE.read_text())
    if {m["model_id"] for m in doc["models"]} <= set(table.models):
        return parse_schedule(doc, table.models, horizon, "bundled schedule", stages), \
            "bundled release-order schedule"
    return all_live(table.models, horizon, stages), "all models live from the start"


def run_command(opts: Options) -> int:
    from streams import backtest as runs
    from streams.console import print_table, progress_line

    p = plan(opts)
    for warning in p.warnings:
        print(f"stageroute backtest: warning: {warning.message}", file=sys.stderr)
    oracles = ORACLES if p.table.task_means() else ORACLES[:1]
    tasks = tuple(runs.Task(seed, policy) for seed in p.seeds
                  for policy in (*oracles, *p.policies))
    store = None
    invocation_id = str(uuid.uuid4())
    if not opts.get("no_audit", flag, False):
        from streams.audit.recorder import open_store

        store = open_store(opts.get("db_url", database_url, None),
                           opts.get("embedded_pg_dir", text, None))
    meta = _meta(p, invocation_id if store else None)
    job = runs.Job(p.table, p.streams, p.configs, tasks,
                   store.engine.url.render_as_string(hide_password=False) if store else None,
                   invocation_id if store else None, meta)
    try:
        with progress_line(len(tasks), quiet=bool(opts.flags.get("quiet"))) as show:
            results = runs.execute(job, p.jobs, show)
    except KeyboardInterrupt:
        if store is not None:
            count = store.interrupt_invocation(invocation_id)
            print(f"stageroute backtest: interrupted; {count} unfinished run(s) of backtest "
                  f"{invocation_id[:8]} marked interrupted", file=sys.stderr)
        raise
    grouped = runs.by_seed(tasks, results)
    summary = _summary(p, meta, grouped)
    if store is not None:
        for oracle, others in grouped.values():
            contextual = _contextual_oracle(others)
            for result in (oracle, *others):
                assert result.run_id is not None
                store.finish_run(result.run_id, {**meta, **result.summary(
                    None if result is oracle else oracle, contextual)})
    print_table(summary)
    if p.json_path:
        p.json_path.write_text(json.dumps(summary, indent=2, allow_nan=False,
                                          default=_finite) + "\n")
    if p.report_path:
        from streams.report import write_report

        write_report(p.report_path, summary, grouped, p.table.models, p.scenario)
        print(f"report: {p.report_path}")
    return 0


def _meta(p: Plan, invocation_id: str | None) -> dict[str, Any]:
    """What every run's stored summary carries besides its own figures."""
    return {
        "data": p.table.source,
        "scenario": p.schedule_source,
        "horizon": p.scenario.horizon,
        "stages": len(p.scenario.stage_starts),
        "order": p.order,
        "feedback_delay": p.feedback_delay,
        "beta": p.beta,
        "budget": p.config.budget,
        "m_max": p.config.m_max,
        "alpha": next(iter(p.streams.values())).default_alpha,
        "gamma": p.config.gamma,
        "budget_control": p.config.budget_control,
        "prices": p.prices,
        "seeds": p.seeds,
        "invocation_id": invocation_id,
        "warnings": [w.as_json() for w in p.warnings],
        "warning_count": len(p.warnings),
    }


def _contextual_oracle(results: list[RunResult]) -> RunResult | None:
    return next((r for r in results if r.policy == "contextual_oracle"), None)


def _row(result: RunResult, oracle: RunResult | None, contextual: RunResult | None,
         stages: int) -> dict[str, Any]:
    row = result.summary(oracle, contextual)
    row["deploys_per_stage"] = len(result.deployments) / stages
    return row


def _summary(p: Plan, meta: dict[str, Any],
             grouped: dict[int, tuple[RunResult, list[RunResult]]]) -> dict[str, Any]:
    """The oracle's, the contextual oracle's (when the data has tasks: ``contextual_oracle``,
    else None) and every policy's figures, aggregated over the seeds and per seed."""
    stages = len(p.scenario.stage_starts)
    per_seed = []
    for seed, (oracle, others) in grouped.items():
        contextual = _contextual_oracle(others)
        per_seed.append({
            "seed": seed,
            "oracle": _row(oracle, None, contextual, stages),
            "contextual_oracle": None if contextual is None
            else _row(contextual, oracle, contextual, stages),
            "policies": [_row(r, oracle, contextual, stages) for r in others
                         if r is not contextual]})
    has_contextual = per_seed[0]["contextual_oracle"] is not None
    return {
        **meta,
        "seed": p.seeds[0],
        "oracle": aggregate([s["oracle"] for s in per_seed]),
        "contextual_oracle": aggregate([s["contextual_oracle"] for s in per_seed])
        if has_contextual else None,
        "policies": [aggregate([s["policies"][i] for s in per_seed])
                     for i in range(len(p.policies))],
        "per_seed": per_seed,
    }


def _finite(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

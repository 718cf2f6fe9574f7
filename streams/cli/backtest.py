"""``stageroute backtest``: replay a reward table through the engine for several policies."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stageroute.backtest.driver import Stream, iid_rows
from stageroute.backtest.runner import RunResult, run_all, run_contextual_oracle
from stageroute.backtest.scenario import Scenario, ScenarioError, all_live, parse_schedule
from stageroute.engine import EngineConfig
from stageroute.policies import POLICIES
from streams.cli.settings import (
    Options,
    UsageError,
    any_int,
    flag,
    non_negative_int,
    positive_float,
    positive_int,
    share,
    text,
)
from streams.data import BUNDLED_TABLE, DEFAULT_SCHEDULE
from streams.tables import RewardTable, load_table

DEFAULT_POLICIES = "stageroute,greedy,random"
DEFAULT_GAMMA = EngineConfig.model_fields["gamma"].default
ORACLES = {"oracle", "contextual_oracle"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backtest", help="replay a reward table through StageRoute and baselines",
        description=(
            "Replay a RouterBench-format table as a query stream: queries are table rows drawn "
            "i.i.d. with the seed (or in table order), models arrive and retire on a schedule, "
            "stages start at K = ceil(T^(1/3)) equal intervals, and each policy's choice gets "
            "that row's score and cost as feedback. Prints one row per policy against the "
            "oracle, which knows the true means and obeys the same limits. Every event and "
            "decision is written to the audit database unless --no-audit.\n\n"
            "Budget convention: the per-query budget is beta times the highest mean per-query "
            "cost among the table's models (USD).\n\n"
            "Every option can also be set as STAGEROUTE_<OPTION> in the environment or as "
            "<option> in a JSON/TOML file given by --config."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="table: .csv, .csv.gz or .parquet (default: bundled "
                                  "RouterBench subset, 2,225 prompts x 11 models)")
    p.add_argument("--scenario", help="JSON arrival/expiry schedule (default: the bundled "
                   "release-order schedule when the models match it, else all models live)")
    p.add_argument("--horizon", help="queries T (default 20000)")
    p.add_argument("--order", choices=["iid", "table"], help="iid: rows drawn with replacement "
                   "using the seed (default); table: rows in file order, cycled")
    p.add_argument("--stages", help="number of stages K (default ceil(T^(1/3)))")
    p.add_argument("--m-max", help="models deployed at once (default 4)")
    p.add_argument("--beta", help="budget as a fraction of the highest mean model cost "
                   "(default 0.3)")
    p.add_argument("--budget", help="budget in USD per query (instead of --beta)")
    p.add_argument("--prices", choices=["known", "unknown"],
                   help="known (default): each model arrives with its list price, its mean "
                   "cost in the table, as the prior of its cost; unknown: costs are learned "
                   "from feedback (the paper's setting), each model's first query being a "
                   "probe of unknown cost")
    p.add_argument("--alpha", help="throughput share of every model (default 2 / m_max, capped "
                   "at 1): a model may take at most twice its fair share")
    p.add_argument("--gamma", help=f"confidence level in the radius (default {DEFAULT_GAMMA})")
    p.add_argument("--seed", help="seed for the query draw and every routing draw (default 0)")
    p.add_argument("--feedback-delay", help="queries between a query and its feedback "
                   "(default 0)")
    p.add_argument("--no-pacing", action="store_const", const=True, default=None,
                   dest="no_pacing", help="route every query with the nominal budget (no "
                   "budget ledger): realised spend may then exceed the budget")
    p.add_argument("--policies", help=f"comma-separated, from: "
                   f"{', '.join(sorted(set(POLICIES) - ORACLES))} (default {DEFAULT_POLICIES}; "
                   f"the oracle always runs, and the contextual oracle when the data has tasks)")
    p.add_argument("--json", help="write a machine-readable summary here")
    p.add_argument("--report", help="write a report: .png (plots) or .html (plots and table)")
    p.add_argument("--db-url", help="SQLAlchemy URL of the audit database (default: an "
                   "embedded PostgreSQL under ./.stageroute)")
    p.add_argument("--no-audit", action="store_const", const=True, default=None,
                   help="do not write the audit trail")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_command)


@dataclass(frozen=True)
class Plan:
    table: RewardTable
    scenario: Scenario
    stream: Stream
    config: EngineConfig
    policies: list[str]
    beta: float
    schedule_source: str
    prices: str


def plan(opts: Options) -> Plan:
    """Validate every option and input file before anything runs."""
    data = opts.get("data", text, None)
    table = load_table(data or BUNDLED_TABLE)
    horizon = opts.get("horizon", positive_int, 20_000)
    stages = opts.get("stages", positive_int, None)
    m_max = opts.get("m_max", positive_int, 4)
    beta = opts.get("beta", positive_float, None)
    budget_usd = opts.get("budget", positive_float, None)
    if beta is not None and budget_usd is not None:
        raise UsageError("--beta and --budget: give one of them, not both")
    prices = opts.get("prices", text, "known")
    if prices not in ("known", "unknown"):
        raise UsageError(f"--prices: expected known or unknown, got {prices!r}")
    alpha = opts.get("alpha", share, min(1.0, 2.0 / m_max))
    gamma = opts.get("gamma", positive_float, DEFAULT_GAMMA)
    seed = opts.get("seed", any_int, 0)
    delay = opts.get("feedback_delay", non_negative_int, 0)
    order = opts.get("order", text, "iid")
    if order not in ("iid", "table"):
        raise UsageError(f"--order: expected iid or table, got {order!r}")
    names = [n.strip() for n in opts.get("policies", text, DEFAULT_POLICIES).split(",")
             if n.strip()]
    unknown = [n for n in names if n not in POLICIES or n in ORACLES]
    if unknown or not names:
        raise UsageError(f"--policies: unknown {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(sorted(set(POLICIES) - ORACLES))}")

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
    config = EngineConfig(
        m_max=m_max, budget=budget_usd, gamma=gamma,
        cost_ceiling=float(np.nanmax(table.costs)), seed=seed,
        budget_control=not opts.get("no_pacing", flag, False))
    rows = (iid_rows(table.n_rows, horizon, seed) if order == "iid"
            else np.arange(horizon) % table.n_rows)
    list_prices = (None if prices == "unknown" else
                   {m: float(c) for m, c in zip(table.models, mean_cost) if np.isfinite(c)})
    stream = Stream(rows, scenario, alpha, list_prices, delay)
    return Plan(table, scenario, stream, config, names, beta, source, prices)


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
    from streams.report import print_table, write_report

    p = plan(opts)
    recorder = None
    if not opts.get("no_audit", flag, False):
        from streams.audit.recorder import open_recorder

        recorder = open_recorder(opts.get("db_url", text, None), kind="backtest",
                         meta={"data": p.table.source, "scenario": p.schedule_source,
                               "beta": p.beta, "alpha": p.stream.default_alpha})
    total = p.scenario.horizon * (len(p.policies) + 1 + bool(p.table.task_means()))
    with tqdm(total=total, unit="q", disable=bool(opts.flags.get("quiet")),
              desc="backtest", dynamic_ncols=True) as bar:
        oracle, results = run_all(p.table, p.stream, p.config, p.policies, recorder,
                                  bar.update, time.perf_counter)
        contextual = run_contextual_oracle(p.table, p.stream, p.config, recorder, bar.update,
                                           time.perf_counter)
    summary = _summary(p, oracle, results, contextual)
    print_table(summary)
    json_path = opts.get("json", text, None)
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2, allow_nan=False,
                                              default=_finite) + "\n")
    report = opts.get("report", text, None)
    if report:
        write_report(report, summary, oracle, results, p.table.models)
    return 0


def _summary(p: Plan, oracle: RunResult, results: list[RunResult],
             contextual: RunResult | None) -> dict[str, Any]:
    return {
        "data": p.table.source,
        "scenario": p.schedule_source,
        "horizon": p.scenario.horizon,
        "stages": len(p.scenario.stage_starts),
        "beta": p.beta,
        "budget": p.config.budget,
        "m_max": p.config.m_max,
        "alpha": p.stream.default_alpha,
        "gamma": p.config.gamma,
        "seed": p.config.seed,
        "budget_control": p.config.budget_control,
        "prices": p.prices,
        "oracle": oracle.summary(None, contextual),
        "contextual_oracle": None if contextual is None else contextual.summary(oracle,
                                                                               contextual),
        "policies": [r.summary(oracle, contextual) for r in results],
    }


def _finite(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

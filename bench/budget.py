"""Does realised spend hold the budget?  Every horizon, budget, price spread and seed.

    python -m bench.budget [--horizons 1000,2000,20000] [--betas 0.01,0.03,0.1,0.3,0.7]
                           [--seeds 5] [--spreads 1,100,1000] [--prices known,unknown]
                           [--policy stageroute] [--jobs 2] [--json FILE]

Each case is a backtest of the bundled RouterBench table on its release-order schedule
(M_max = 4, alpha = 0.5, feedback after every query), the oracle and the policy on the same
stream.  The promise (issue "A budget you can trust"), with ``allowance = max(budget, the
oracle's realised average cost)`` (the oracle overspends only where the budget is below every
live mix):

* final: the policy's realised average cost <= 1.02 x allowance, on every seed;
* prefix: its running average over every prefix of >= 500 queries <= 1.10 x allowance.
  Where the budget is below every live mix early in the run and not later, no policy can meet
  this (the oracle's own early prefixes exceed its whole-run average), so the prefix is also
  judged against ``max(allowance, the oracle's running average over the same prefix)``: the
  allowance, raised only where the oracle itself is above it.

Spreads: ``1`` is the table as it is (dearest / cheapest mean cost = 61x); ``100`` and
``1000`` rescale each model's cost column so that the spread of mean costs becomes that, on a
log scale (``mean_m -> max_mean (mean_m / max_mean)^g``), keeping the dearest model's costs and
so the budget ``beta x max_mean``.  ``--prices unknown`` gives no list prices: costs are learned
from feedback, each model's first query a probe.

Prints one row per (spread, prices, horizon, beta): the worst final and prefix ratios over the
seeds, how many seeds break each bound, and the policy's average reward as % of the oracle's.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from stageroute.backtest.driver import Stream, iid_rows
from stageroute.backtest.runner import RunResult, run_all
from stageroute.backtest.scenario import Scenario, parse_schedule
from stageroute.backtest.table import RewardTable
from stageroute.engine import EngineConfig
from streams.data import BUNDLED_TABLE, DEFAULT_SCHEDULE
from streams.tables import load_table

FINAL, PREFIX, PREFIX_FROM = 1.02, 1.10, 500
M_MAX, ALPHA = 4, 0.5


@dataclass(frozen=True)
class Case:
    spread: float
    prices: str
    horizon: int
    beta: float
    seed: int
    policy: str


@lru_cache(maxsize=4)
def table_with_spread(spread: float) -> RewardTable:
    """The bundled table with its price spread widened (``1``: unchanged)."""
    return widen(load_table(BUNDLED_TABLE), spread)


def widen(table: RewardTable, spread: float) -> RewardTable:
    """``table`` with each cost column rescaled so that max/min mean cost is ``spread``, on a
    log scale, keeping the dearest model's costs (``1``: unchanged)."""
    if spread == 1:
        return table
    means = table.mean_cost()
    top, now = float(means.max()), float(means.max() / means.min())
    g = math.log(spread) / math.log(now)
    factors = (means / top) ** (g - 1.0)
    return RewardTable(table.models, table.sample_ids, table.tasks, table.scores,
                       table.costs * factors, source=f"{table.source} (spread {spread:g}x)")


def scenario(table: RewardTable, horizon: int) -> Scenario:
    return parse_schedule(json.loads(DEFAULT_SCHEDULE.read_text()), table.models, horizon,
                          "bundled schedule")


def running_cost(result: RunResult) -> np.ndarray:
    """Realised average cost over each prefix of >= PREFIX_FROM queries."""
    costs = result.costs
    answered = ~np.isnan(costs)
    total = np.cumsum(np.where(answered, costs, 0.0))
    count = np.cumsum(answered)
    return total[PREFIX_FROM - 1:] / np.maximum(count[PREFIX_FROM - 1:], 1)


def run_case(case: Case, table: RewardTable | None = None,
             **engine: Any) -> dict[str, Any]:
    """The oracle and the policy on one case (``table``: instead of the bundled one widened to
    the case's spread; ``engine``: EngineConfig fields to override)."""
    table = table or table_with_spread(case.spread)
    means = table.mean_cost()
    budget = case.beta * float(means.max())
    prices = (None if case.prices == "unknown" else
              {m: float(c) for m, c in zip(table.models, means)})
    stream = Stream(iid_rows(table.n_rows, case.horizon, case.seed),
                    scenario(table, case.horizon), ALPHA, prices)
    config = EngineConfig(m_max=M_MAX, budget=budget, cost_ceiling=float(np.nanmax(table.costs)),
                          seed=case.seed, **engine)
    oracle, (result,) = run_all(table, stream, config, [case.policy])
    allowance = max(budget, oracle.avg_cost)
    running = running_cost(result)
    return {**case.__dict__, "budget": budget, "allowance": allowance,
            "final": result.avg_cost / allowance,
            "prefix": float(running.max()) / allowance,
            "prefix_vs_oracle": float(np.max(
                running / np.maximum(allowance, running_cost(oracle)))),
            "pct_of_oracle": 100.0 * result.avg_reward / oracle.avg_reward,
            "oracle_budget_use": oracle.avg_cost / budget,
            "budget_infeasible": result.budget_infeasible}


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", default="1000,2000,20000")
    parser.add_argument("--betas", default="0.01,0.03,0.1,0.3,0.7")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--spreads", default="1,100,1000")
    parser.add_argument("--prices", default="known,unknown")
    parser.add_argument("--policy", default="stageroute")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write every case's figures here")
    args = parser.parse_args()

    cases = [Case(spread, prices, int(t), beta, seed, args.policy)
             for spread in floats(args.spreads) for prices in args.prices.split(",")
             for t in floats(args.horizons) for beta in floats(args.betas)
             for seed in range(args.seeds)]
    started = time.perf_counter()
    with mp.Pool(args.jobs) as pool:
        rows = pool.map(run_case, cases, chunksize=1)
    print(f"{args.policy}: {len(cases)} cases, {args.seeds} seeds each, "
          f"{time.perf_counter() - started:.0f} s; ratios to allowance = max(budget, oracle's "
          f"realised cost); final bound {FINAL}, prefix (n >= {PREFIX_FROM}) bound {PREFIX}")
    print(f"{'spread':>6} {'prices':>7} {'T':>6} {'beta':>5} {'oracle/b':>8} {'final max':>9} "
          f"{'>1.02':>5} {'prefix max':>10} {'>1.10':>5} {'vs oracle':>9} {'>1.10':>5} "
          f"{'% oracle':>8} {'min..max':>13}")
    failures = 0
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["spread"], row["prices"], row["horizon"], row["beta"]),
                          []).append(row)
    for (spread, prices, t, beta), group in groups.items():
        final_bad = sum(r["final"] > FINAL for r in group)
        prefix_bad = sum(r["prefix"] > PREFIX for r in group)
        fair_bad = sum(r["prefix_vs_oracle"] > PREFIX for r in group)
        failures += final_bad + fair_bad
        pct = [r["pct_of_oracle"] for r in group]
        print(f"{spread:>5g}x {prices:>7} {t:>6} {beta:>5g} "
              f"{max(r['oracle_budget_use'] for r in group):>8.3f} "
              f"{max(r['final'] for r in group):>9.4f} {final_bad:>5} "
              f"{max(r['prefix'] for r in group):>10.4f} {prefix_bad:>5} "
              f"{max(r['prefix_vs_oracle'] for r in group):>9.4f} {fair_bad:>5} "
              f"{sum(pct) / len(pct):>8.2f} {min(pct):>6.2f}..{max(pct):<6.2f}")
    print(f"bounds broken (final, and prefix vs the oracle's prefix): {failures} "
          f"(of {2 * len(rows)} checks)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()

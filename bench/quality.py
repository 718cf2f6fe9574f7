"""Decision quality on the bundled RouterBench table with the default model schedule.

    python -m bench.quality [--horizon 20000] [--seeds 5] [--gamma 0.5] [--m-max 4]
                            [--alpha 0.5] [--no-pacing] [--pacing-window W]
                            [--prices known|unknown] [--json FILE]

For each beta in {0.3, 0.7} (budget = beta x the highest mean per-query model cost) and each
seed 0..seeds-1 (the seed draws the rows i.i.d. and keys every routing draw), the oracle and the
policies stageroute, stageroute_paper, greedy, random, epsilon_greedy, thompson, static and
ucb_bwk run on the same stream (``stageroute.backtest.runner.run_all``): default schedule
(``streams/data/default_schedule.json``), ``K = ceil(T^(1/3))`` equal stages, feedback right
after each query, ``cost_ceiling`` = the largest single cost in the table, and (``--prices
known``, the default) each model's mean cost in the table as its list price.

Prints, per beta and policy, mean +- std over seeds of the realised average reward, its percent
of the oracle's, budget use (realised average cost / budget), expected regret against the oracle
and backtest queries/s; then the acceptance checks, each required for every seed: StageRoute
within 5 % of the oracle at beta = 0.3 and within 2 % at 0.7, ahead of random and greedy, and
its realised average cost within budget + 2 %.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stageroute.backtest.driver import Stream, iid_rows
from stageroute.backtest.runner import run_all
from stageroute.backtest.scenario import Scenario, parse_schedule
from stageroute.engine import EngineConfig
from streams.data import BUNDLED_TABLE, DEFAULT_SCHEDULE
from streams.tables import RewardTable, load_table

POLICIES = ("stageroute", "stageroute_paper", "greedy", "random", "epsilon_greedy", "thompson",
            "static", "ucb_bwk")
BETAS = (0.3, 0.7)
#: StageRoute's required realised reward, in percent of the oracle's, per beta.
ORACLE_FLOOR = {0.3: 95.0, 0.7: 98.0}
BUDGET_SLACK = 1.02
METRICS = (("avg_reward", "avg reward", "{:.4f}"), ("pct_of_oracle", "% oracle", "{:.2f}"),
           ("budget_use", "budget use", "{:.3f}"), ("regret", "regret", "{:.0f}"),
           ("queries_per_second", "queries/s", "{:.0f}"))


def default_scenario(table: RewardTable, horizon: int, stages: int | None = None) -> Scenario:
    doc = json.loads(DEFAULT_SCHEDULE.read_text())
    return parse_schedule(doc, table.models, horizon, str(DEFAULT_SCHEDULE), stages)


def base_config(table: RewardTable, beta: float, *, m_max: int, gamma: float, seed: int,
                pacing: bool = True, pacing_window: int | None = None) -> EngineConfig:
    window = {} if pacing_window is None else {"pacing_window": pacing_window}
    return EngineConfig(
        policy="stageroute", m_max=m_max, budget=beta * float(table.mean_cost().max()),
        gamma=gamma, cost_ceiling=float(np.nanmax(table.costs)), seed=seed,
        budget_control=pacing, **window,
    )


def list_prices(table: RewardTable) -> dict[str, float]:
    """Each model's mean cost in the table, as a published price list would give it."""
    return {m: float(c) for m, c in zip(table.models, table.mean_cost()) if np.isfinite(c)}


def _mean_std(values: list[float], fmt: str) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horizon", type=int, default=20_000, help="queries T (default 20000)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..n-1 (default 5)")
    parser.add_argument("--gamma", type=float, default=0.5, help="confidence scale (default 0.5)")
    parser.add_argument("--m-max", type=int, default=4, help="concurrency limit (default 4)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="throughput share of every model (default 0.5)")
    parser.add_argument("--no-pacing", action="store_true",
                        help="EngineConfig.budget_control=False: no budget ledger (ablation)")
    parser.add_argument("--pacing-window", type=int, default=None,
                        help="queries over which an overrun is repaid (default: the engine's)")
    parser.add_argument("--prices", choices=["known", "unknown"], default="known",
                        help="list prices on arrivals (default known)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every run's summary")
    args = parser.parse_args()

    table = load_table(BUNDLED_TABLE)
    horizon, seeds = args.horizon, list(range(args.seeds))
    scenario = default_scenario(table, horizon)
    pacing = not args.no_pacing
    print(f"Decision quality: {table.n_rows} RouterBench rows, {len(table.models)} models, "
          f"default schedule, T = {horizon:,}, K = {len(scenario.stage_starts)} stages, "
          f"M_max = {args.m_max}, alpha = {args.alpha}, gamma = {args.gamma}, "
          f"budget ledger {'on' if pacing else 'OFF'}, prices {args.prices}, "
          f"seeds {seeds[0]}..{seeds[-1]}")
    print(f"budget = beta x {float(table.mean_cost().max()):.3e} USD (highest mean model cost); "
          f"cost_ceiling = {float(np.nanmax(table.costs)):.3e} USD\n")

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    total = len(BETAS) * len(seeds) * (len(POLICIES) + 1) * horizon
    with tqdm(total=total, unit="q", unit_scale=True, file=sys.stderr, smoothing=0.05) as bar:
        for beta in BETAS:
            for seed in seeds:
                bar.set_description(f"beta={beta} seed={seed}")
                config = base_config(table, beta, m_max=args.m_max, gamma=args.gamma, seed=seed,
                                     pacing=pacing, pacing_window=args.pacing_window)
                stream = Stream(iid_rows(table.n_rows, horizon, seed), scenario, args.alpha,
                                None if args.prices == "unknown" else list_prices(table))
                oracle, results = run_all(table, stream, config, POLICIES, progress=bar.update,
                                          clock=time.perf_counter)
                for result in (oracle, *results):
                    rows.append({"beta": beta, "seed": seed, **result.summary(oracle)})
    elapsed = time.perf_counter() - started

    for beta in BETAS:
        print(f"beta = {beta}  (budget {beta * float(table.mean_cost().max()):.3e} USD/query)")
        print(f"{'policy':<15}" + "".join(f"{label:>20}" for _, label, _ in METRICS))
        for policy in ("oracle", *POLICIES):
            runs = [r for r in rows if r["beta"] == beta and r["policy"] == policy]
            cells = []
            for key, _, fmt in METRICS:
                values = [float(r[key]) for r in runs]
                cells.append("-" if any(math.isnan(v) for v in values)
                             else _mean_std(values, fmt))
            print(f"{policy:<15}" + "".join(f"{c:>20}" for c in cells))
        print()

    print("Checks (every seed must pass; worst seed shown):")
    ok_all = True
    for beta in BETAS:
        by = {(r["policy"], r["seed"]): r for r in rows if r["beta"] == beta}
        ours = [by[("stageroute", s)] for s in seeds]
        checks = [
            (f"StageRoute >= {ORACLE_FLOOR[beta]:.0f}% of oracle",
             [r["pct_of_oracle"] >= ORACLE_FLOOR[beta] for r in ours],
             f"min {min(r['pct_of_oracle'] for r in ours):.2f}%"),
        ]
        for rival in ("random", "greedy"):
            gaps = [by[("stageroute", s)]["avg_reward"] - by[(rival, s)]["avg_reward"]
                    for s in seeds]
            checks.append((f"StageRoute ahead of {rival}", [g > 0 for g in gaps],
                           f"min gap {min(gaps):+.4f}"))
        checks.append((f"StageRoute cost <= budget x {BUDGET_SLACK}",
                       [r["budget_use"] <= BUDGET_SLACK for r in ours],
                       f"max use {max(r['budget_use'] for r in ours):.4f}"))
        for name, passed, worst in checks:
            ok = all(passed)
            ok_all &= ok
            failed = [str(s) for s, good in zip(seeds, passed) if not good]
            print(f"  beta={beta}: {name:<36} {'PASS' if ok else 'FAIL'} "
                  f"({sum(passed)}/{len(passed)} seeds, {worst}"
                  f"{'; fails seed ' + ','.join(failed) if failed else ''})")
    print(f"\nall checks: {'PASS' if ok_all else 'FAIL'}; {len(rows)} runs in {elapsed:.0f} s")

    if args.json:
        meta = {"horizon": horizon, "seeds": seeds, "gamma": args.gamma, "m_max": args.m_max,
                "alpha": args.alpha, "budget_control": pacing, "prices": args.prices,
                "betas": list(BETAS),
                "stages": len(scenario.stage_starts), "all_checks_pass": ok_all}
        args.json.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Contextual decision quality on the bundled RouterBench table with the default schedule.

    python -m bench.contextual [--horizon 20000] [--seeds 5] [--m-max 4] [--alpha 0.5]
                               [--jobs 2] [--json FILE] [--param key=value ...]

For each beta in {0.3, 0.7} and seed 0..seeds-1 (rows drawn i.i.d. with the seed, every
routing draw keyed by it), the non-contextual oracle, the contextual oracle (true means per
task and model, same limits and plan over contexts) and the policies stageroute, greedy,
contextual and contextual_greedy run on the same stream, as ``bench.quality`` runs them:
default schedule, K = ceil(T^(1/3)) stages, feedback right after each query, list prices
known, the budget ledger on.  Queries carry their row's task (``eval_name``): arc-challenge,
mbpp or winogrande.  ``--param`` sets a contextual policy parameter (e.g. ``prior_weight=5``).

Prints, per beta and policy, mean +- sd over seeds of the average reward, % of the oracle,
% of the contextual oracle, budget use and backtest queries/s, then the issue's checks: the
contextual policy earns more than the non-contextual oracle on every seed with realised cost
within budget + 2 %, and more than contextual_greedy on average.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import time
from pathlib import Path
from typing import Any

from bench.quality import BUDGET_SLACK, base_config, default_scenario, list_prices
from stageroute.backtest.driver import Stream, iid_rows
from stageroute.backtest.runner import run_all, run_contextual_oracle
from streams.data import BUNDLED_TABLE
from streams.tables import load_table

POLICIES = ("stageroute", "greedy", "contextual", "contextual_greedy")
BETAS = (0.3, 0.7)
METRICS = (("avg_reward", "avg reward", "{:.4f}"), ("pct_of_oracle", "% oracle", "{:.2f}"),
           ("pct_of_contextual_oracle", "% ctx oracle", "{:.2f}"),
           ("budget_use", "budget use", "{:.3f}"), ("queries_per_second", "queries/s", "{:.0f}"))


def run_seed(task: tuple[float, int, int, int, float, dict[str, Any]]) -> list[dict[str, Any]]:
    """Both oracles and every policy for one (beta, seed)."""
    beta, seed, horizon, m_max, alpha, params = task
    table = load_table(BUNDLED_TABLE)
    config = base_config(table, beta, m_max=m_max, gamma=0.5, seed=seed).model_copy(
        update={"policy_params": params})
    stream = Stream(iid_rows(table.n_rows, horizon, seed), default_scenario(table, horizon),
                    alpha, list_prices(table))
    oracle, results = run_all(table, stream, config, POLICIES, clock=time.perf_counter)
    contextual = run_contextual_oracle(table, stream, config.model_copy(
        update={"policy_params": {}}), clock=time.perf_counter)
    assert contextual is not None
    return [{"beta": beta, "seed": seed, **r.summary(oracle, contextual)}
            for r in (oracle, contextual, *results)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horizon", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--m-max", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a contextual policy parameter (JSON value)")
    args = parser.parse_args()
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}

    table = load_table(BUNDLED_TABLE)
    print(f"Contextual quality: {table.n_rows} RouterBench rows, {len(table.models)} models, "
          f"tasks {', '.join(sorted(table.task_means()))}; default schedule, "
          f"T = {args.horizon:,}, K = {len(default_scenario(table, args.horizon).stage_starts)} "
          f"stages, M_max = {args.m_max}, alpha = {args.alpha}, gamma = 0.5, budget ledger on, "
          f"list prices known, seeds 0..{args.seeds - 1}"
          + (f", contextual parameters {params}" if params else ""))
    tasks = [(beta, seed, args.horizon, args.m_max, args.alpha, params) for beta in BETAS
             for seed in range(args.seeds)]
    started = time.perf_counter()
    with mp.Pool(args.jobs) as pool:
        rows = [row for group in pool.map(run_seed, tasks, chunksize=1) for row in group]
    elapsed = time.perf_counter() - started

    names = ("oracle", "contextual_oracle", *POLICIES)
    for beta in BETAS:
        budget = beta * float(table.mean_cost().max())
        print(f"\nbeta = {beta}  (budget {budget:.3e} USD/query)")
        print(f"{'policy':<19}" + "".join(f"{label:>19}" for _, label, _ in METRICS))
        for name in names:
            runs = [r for r in rows if r["beta"] == beta and r["policy"] == name]
            cells = []
            for key, _, fmt in METRICS:
                values = [math.nan if r[key] is None else float(r[key]) for r in runs]
                cells.append("-" if any(math.isnan(v) for v in values) else
                             f"{fmt.format(statistics.fmean(values))} ± "
                             f"{fmt.format(statistics.stdev(values) if len(values) > 1 else 0)}")
            print(f"{name:<19}" + "".join(f"{c:>19}" for c in cells))

    print("\nChecks (worst seed shown):")
    ok_all = True
    for beta in BETAS:
        by = {(r["policy"], r["seed"]): r for r in rows if r["beta"] == beta}
        seeds = range(args.seeds)
        ours = [by[("contextual", s)] for s in seeds]
        gaps = [by[("contextual", s)]["avg_reward"] - by[("oracle", s)]["avg_reward"]
                for s in seeds]
        greedy = [by[("contextual", s)]["avg_reward"]
                  - by[("contextual_greedy", s)]["avg_reward"] for s in seeds]
        checks = [
            ("contextual ahead of the oracle, every seed", all(g > 0 for g in gaps),
             f"min gap {min(gaps):+.4f}"),
            (f"contextual cost <= budget x {BUDGET_SLACK}, every seed",
             all(r["budget_use"] <= BUDGET_SLACK for r in ours),
             f"max use {max(r['budget_use'] for r in ours):.4f}"),
            ("contextual ahead of contextual_greedy on average", statistics.fmean(greedy) > 0,
             f"mean gap {statistics.fmean(greedy):+.4f}, {sum(g > 0 for g in greedy)}/"
             f"{len(greedy)} seeds"),
        ]
        for name, ok, worst in checks:
            ok_all &= ok
            print(f"  beta={beta}: {name:<50} {'PASS' if ok else 'FAIL'} ({worst})")
    print(f"\nall checks: {'PASS' if ok_all else 'FAIL'}; {len(rows)} runs in {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"params": params, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

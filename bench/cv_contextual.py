"""Cross-validated defaults for the contextual policy: prior weight, re-plan interval, gamma.

    python -m bench.cv_contextual [--folds 3] [--seeds 3] [--horizon 10000] [--workers 2]
                                  [--json FILE]

The bundled table's rows are split into folds as in ``bench.cv`` (same permutation seed); for
fold ``i`` the training table is the union of the other folds, the held-out table is fold
``i``.  Each candidate runs the contextual policy on each table (default schedule, M_max = 4,
alpha = 0.5, list prices known, the budget ledger on) at beta 0.3 and 0.7 and seeds
0..seeds-1, beside the contextual oracle of the same table and stream, and is scored by

    score = pct_of_contextual_oracle - 100 max(0, budget_use - 1.02)

averaged over seeds and betas.  One parameter varies at a time around the baseline, the
current defaults (``prior_weight`` 10, ``replan_every`` 50, gamma 0.5):

* prior_weight (pseudo-observations of the pooled prior) in {0, 2, 5, 10, 20, 50}; 0 is no
  pooling at all;
* replan_every (queries per context between plans, besides those at stage starts, expiries
  and new contexts) in {0 (none), 10, 25, 50, 100}; the bundled data has 4 plan contexts
  (three tasks and "no context"), so 25 is a plan every 100 queries;
* gamma (the confidence radius' scale, the engine's own parameter) in {0.25, 0.5, 1}.

On each fold the candidate with the best training score is chosen and its held-out score
reported; the recommended value is the one chosen on most folds, ties to the first listed in
``TIE_ORDER`` (the baseline first: a default moves only when the data say so).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.cv import fold_tables
from bench.quality import BETAS, BUDGET_SLACK, base_config, default_scenario, list_prices
from stageroute.backtest.driver import Stream, iid_rows
from stageroute.backtest.runner import run, run_contextual_oracle
from stageroute.engine import EngineConfig
from stageroute.policies.contextual import DEFAULT_PRIOR_WEIGHT, DEFAULT_REPLAN_EVERY
from streams.data import BUNDLED_TABLE
from streams.tables import RewardTable, load_table

BASE = {"prior_weight": DEFAULT_PRIOR_WEIGHT, "replan_every": DEFAULT_REPLAN_EVERY,
        "gamma": EngineConfig.model_fields["gamma"].default}
GRID: dict[str, list[Any]] = {
    "prior_weight": [0.0, 2.0, 5.0, 10.0, 20.0, 50.0],
    "replan_every": [0, 10, 25, 50, 100],
    "gamma": [0.25, 0.5, 1.0],
}
TIE_ORDER = {name: [BASE[name], *[v for v in values if v != BASE[name]]]
             for name, values in GRID.items()}
M_MAX, ALPHA = 4, 0.5

_TABLES: dict[tuple[int, ...], RewardTable] = {}


def _init(folds: int, split_seed: int) -> None:
    _TABLES.update(fold_tables(load_table(BUNDLED_TABLE), folds, split_seed))


def settings() -> list[tuple[float, int, float]]:
    """Every distinct (prior_weight, replan_every, gamma) the grid needs."""
    out = {(BASE["prior_weight"], BASE["replan_every"], BASE["gamma"])}
    for name, values in GRID.items():
        for value in values:
            point = {**BASE, name: value}
            out.add((point["prior_weight"], point["replan_every"], point["gamma"]))
    return sorted(out)


def _run_group(task: tuple[tuple[int, ...], int, float, int, list[tuple[float, int, float]]],
               ) -> list[dict[str, Any]]:
    key, seed, beta, horizon, points = task
    table = _TABLES[key]
    stream = Stream(iid_rows(table.n_rows, horizon, seed), default_scenario(table, horizon),
                    ALPHA, list_prices(table))
    base = base_config(table, beta, m_max=M_MAX, gamma=0.5, seed=seed)
    oracle = run_contextual_oracle(table, stream, base)
    assert oracle is not None
    out = []
    for weight, every, gamma in points:
        config = base.model_copy(update={
            "policy": "contextual", "gamma": gamma,
            "policy_params": {"prior_weight": weight, "replan_every": every}})
        summary = run(table, stream, config).summary(None, oracle)
        out.append({"table": list(key), "seed": seed, "beta": beta, "prior_weight": weight,
                    "replan_every": every, "gamma": gamma,
                    "pct": summary["pct_of_contextual_oracle"],
                    "budget_use": summary["budget_use"], "avg_reward": summary["avg_reward"],
                    "score": summary["pct_of_contextual_oracle"]
                    - 100.0 * max(0.0, summary["budget_use"] - BUDGET_SLACK)})
    return out


def report(records: list[dict[str, Any]], folds: int) -> dict[str, Any]:
    splits = [((i,), tuple(j for j in range(folds) if j != i)) for i in range(folds)]
    cell: dict[tuple[tuple[int, ...], tuple[float, int, float]], list[dict[str, Any]]] = \
        defaultdict(list)
    for r in records:
        cell[(tuple(r["table"]), (r["prior_weight"], r["replan_every"], r["gamma"]))].append(r)

    def mean(key: tuple[int, ...], point: tuple[float, int, float], field: str) -> float:
        return statistics.fmean(r[field] for r in cell[(key, point)])

    recommended = {}
    for name, values in GRID.items():
        points = {v: tuple({**BASE, name: v}[k] for k in ("prior_weight", "replan_every",
                                                          "gamma")) for v in values}
        train = {v: [mean(tr, points[v], "score") for _, tr in splits] for v in values}
        held = {v: [mean(te, points[v], "score") for te, _ in splits] for v in values}
        chosen = [max(values, key=lambda v, i=i: train[v][i]) for i in range(folds)]
        print(f"{name}: values at baseline otherwise")
        print(f"{'value':>8} {'train':>8} {'held-out':>9} {'held rwd':>9} {'max use':>8}  "
              f"chosen on folds")
        for v in values:
            held_rows = [r for te, _ in splits for r in cell[(te, points[v])]]
            won = ",".join(str(i) for i, c in enumerate(chosen) if c == v) or "-"
            print(f"{v:>8g} {statistics.fmean(train[v]):>8.2f} {statistics.fmean(held[v]):>9.2f}"
                  f" {statistics.fmean(r['avg_reward'] for r in held_rows):>9.4f}"
                  f" {max(r['budget_use'] for r in held_rows):>8.3f}  {won}")
        votes = Counter(chosen)
        top = max(votes.values())
        pick = next(v for v in TIE_ORDER[name] if votes.get(v) == top)
        recommended[name] = pick
        tied = sum(c == top for c in votes.values()) > 1
        print(f"  -> recommended {name}: {pick:g} (chosen on {top}/{folds} folds"
              f"{', tie broken toward the baseline' if tied else ''})\n")
    return recommended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split-seed", type=int, default=20250620)
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args()

    keys = sorted({(i,) for i in range(args.folds)}
                  | {tuple(j for j in range(args.folds) if j != i) for i in range(args.folds)})
    points = settings()
    tasks = [(key, seed, beta, args.horizon, points) for key in keys
             for seed in range(args.seeds) for beta in BETAS]
    print(f"Contextual CV: {args.folds} folds (permutation seed {args.split_seed}), "
          f"T = {args.horizon:,}, seeds 0..{args.seeds - 1}, beta in {list(BETAS)}, "
          f"M_max = {M_MAX}, alpha = {ALPHA}; {len(points)} settings x {len(tasks)} "
          f"(table, seed, beta) + contextual oracles")
    print(f"score = pct_of_contextual_oracle - 100 max(0, budget_use - {BUDGET_SLACK})\n")
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
    with ctx.Pool(args.workers, initializer=_init, initargs=(args.folds, args.split_seed)) as pool:
        for out in pool.imap_unordered(_run_group, tasks):
            records.extend(out)
    recommended = report(records, args.folds)
    print("Recommended: " + ", ".join(f"{k} = {v:g}" for k, v in recommended.items())
          + f"; {len(records)} runs in {(time.perf_counter() - started) / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"records": records, "recommended": recommended},
                                        indent=1) + "\n")
    if not math.isfinite(sum(r["score"] for r in records)):
        raise SystemExit("a score is not finite")


if __name__ == "__main__":
    main()

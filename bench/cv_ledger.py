"""Cross-validated defaults for the budget ledger: pacing window W, reserve rho, overdraft eps.

    python -m bench.cv_ledger [--folds 3] [--seeds 2] [--horizon 2000] [--workers 2]

The bundled table's rows are split into folds as in ``bench.cv``; for fold ``i`` the training
table is the union of the other folds, the held-out table is fold ``i``.  Each candidate
``(W, rho, eps)`` runs StageRoute and the oracle (same config) on each table, at every beta in
``BETAS``, price spread in ``SPREADS`` (``bench.budget.widen``) and seed, known prices, and is
scored by

    score = pct_of_oracle - 100 max(0, final - 1.02) - 100 max(0, prefix - 1.10)

with ``final`` and ``prefix`` the budget-promise ratios of ``bench.budget`` (realised cost over
the allowance at the end and over every prefix of >= 500 queries): reward, minus a penalty
for every point the promise is broken by.  On each fold the candidate with the best training
score is chosen and its held-out score reported.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import statistics
from collections import Counter, defaultdict
from typing import Any

from bench.budget import FINAL, PREFIX, Case, run_case, widen
from bench.cv import fold_tables
from streams.data import BUNDLED_TABLE
from streams.tables import load_table

WINDOWS = (30, 100, 300, 1000)
RESERVES = (0.0, 0.05, 0.1)
OVERDRAFTS = (0.005, 0.01)
BETAS = (0.03, 0.1, 0.3, 0.7)
SPREADS = (1.0, 1000.0)
_TABLES: dict[tuple[int, ...], Any] = {}


def _init(folds: int, split_seed: int) -> None:
    _TABLES.update(fold_tables(load_table(BUNDLED_TABLE), folds, split_seed))


def _run(task: tuple[Any, ...]) -> dict[str, Any]:
    key, (window, reserve, overdraft), spread, beta, seed, horizon = task
    case = Case(spread, "known", horizon, beta, seed, "stageroute")
    row = run_case(case, widen(_TABLES[key], spread), pacing_window=window,
                   exploration_reserve=reserve, overdraft=overdraft)
    score = (row["pct_of_oracle"] - 100.0 * max(0.0, row["final"] - FINAL)
             - 100.0 * max(0.0, row["prefix_vs_oracle"] - PREFIX))
    return {"table": key, "candidate": (window, reserve, overdraft), "score": score, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split-seed", type=int, default=20250620)
    args = parser.parse_args()

    splits = [((i,), tuple(j for j in range(args.folds) if j != i)) for i in range(args.folds)]
    keys = sorted({k for split in splits for k in split})
    candidates = list(itertools.product(WINDOWS, RESERVES, OVERDRAFTS))
    tasks = [(key, cand, spread, beta, seed, args.horizon) for key in keys
             for cand in candidates for spread in SPREADS for beta in BETAS
             for seed in range(args.seeds)]
    with mp.Pool(args.workers, initializer=_init, initargs=(args.folds, args.split_seed)) as pool:
        rows = pool.map(_run, tasks, chunksize=4)

    cell: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cell[(row["table"], row["candidate"])].append(row)

    def mean(key: tuple[int, ...], cand: tuple[int, float, float], field: str) -> float:
        return statistics.fmean(r[field] for r in cell[(key, cand)])

    print(f"Budget-ledger CV: {args.folds} folds, T = {args.horizon:,}, seeds "
          f"0..{args.seeds - 1}, beta in {list(BETAS)}, spreads {list(SPREADS)}, known prices")
    print(f"{'W':>6} {'rho':>5} {'eps':>6} {'train':>8} {'held-out':>9} {'held % oracle':>14} "
          f"{'held final max':>15} {'held prefix max':>16}  chosen on folds")
    chosen = [max(candidates, key=lambda c, tr=tr: mean(tr, c, "score")) for _, tr in splits]
    for cand in candidates:
        held = [r for te, _ in splits for r in cell[(te, cand)]]
        won = ",".join(str(i) for i, c in enumerate(chosen) if c == cand) or "-"
        print(f"{cand[0]:>6} {cand[1]:>5} {cand[2]:>6} "
              f"{statistics.fmean(mean(tr, cand, 'score') for _, tr in splits):>8.2f} "
              f"{statistics.fmean(mean(te, cand, 'score') for te, _ in splits):>9.2f} "
              f"{statistics.fmean(r['pct_of_oracle'] for r in held):>14.2f} "
              f"{max(r['final'] for r in held):>15.4f} "
              f"{max(r['prefix_vs_oracle'] for r in held):>16.4f}  {won}")
    votes = Counter(chosen).most_common()
    best = votes[0][0]
    print(f"chosen per fold: {chosen}; most often: W = {best[0]}, rho = {best[1]}, "
          f"eps = {best[2]}")


if __name__ == "__main__":
    main()

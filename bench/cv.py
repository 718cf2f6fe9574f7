"""Cross-validated defaults for gamma, the stage count K and the throughput-share rule.

    python -m bench.cv [--folds 3] [--seeds 4] [--horizon 10000] [--workers 2] [--json FILE]

The bundled table's rows are split into ``--folds`` disjoint folds by a fixed seeded permutation
(``--split-seed``).  For fold ``i`` the training table is the union of the other folds and the
held-out table is fold ``i``.  Every candidate runs StageRoute (with its own oracle, same config)
on each table with seeds 0..seeds-1 and beta in {0.3, 0.7} (budget = beta x that table's highest
mean model cost), horizon T, the default schedule, feedback right after each query, and is
scored by

    score = pct_of_oracle - 100 * max(0, budget_use - 1.02)

averaged over seeds and betas.  On each fold the candidate with the best *training* score is
chosen and its *held-out* score reported.  One parameter varies at a time around the baseline
gamma = 0.5, K = ceil(T^(1/3)), M_max = 4, alpha = 0.5:

* gamma in {0.05, 0.1, 0.25, 0.5, 1, 2, log(N T / 0.1)};
* K in {ceil(T^(1/3) / 2), ceil(T^(1/3)), ceil(2 T^(1/3))};
* alpha rule in {0.5 fixed, 2 / M_max, 1.5 / M_max}, each at M_max = 4 and 8 (a rule's score is
  the mean over both M_max).

The recommended default is the value chosen on most folds; a tie goes to the more principled
or simpler value (listed first in ``TIE_ORDER``).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.quality import BETAS, BUDGET_SLACK, base_config, default_scenario
from stageroute.backtest.driver import Stream, iid_rows
from stageroute.backtest.runner import oracle_means, run
from stageroute.engine import default_gamma
from streams.data import BUNDLED_TABLE
from streams.tables import RewardTable, load_table

BASE_GAMMA = 0.5
BASE_M_MAX = 4
BASE_ALPHA = 0.5
GAMMAS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
ALPHA_RULES: dict[str, Callable[[int], float]] = {
    "0.5 fixed": lambda m: 0.5,
    "2/M_max": lambda m: 2.0 / m,
    "1.5/M_max": lambda m: 1.5 / m,
}
ALPHA_M_MAX = (4, 8)
#: Tie-break between values chosen on equally many folds: earlier = more principled/simpler.
TIE_ORDER = {
    "gamma": ["log(NT/δ)", "1", "0.5", "0.25", "2", "0.1", "0.05"],
    "K": ["T^(1/3)", "T^(1/3)/2", "2 T^(1/3)"],
    "alpha": ["2/M_max", "0.5 fixed", "1.5/M_max"],
}
#: Why a value wins a tie (the first of ``TIE_ORDER[param]`` among the tied values).
WHY = {
    "log(NT/δ)": "the paper's Theta(log(NT/δ)) with constant 1",
    "1": "the constant-1 radius, the engine's current default, and no horizon dependence",
    "0.5": "the constant currently used by the benchmarks",
    "T^(1/3)": "ceil(T^(1/3)) is the paper's regret-optimal order",
    "2/M_max": "scale-free: a full deployment's caps sum to 2, always feasible",
    "0.5 fixed": "one constant, no dependence on M_max",
}


@dataclass(frozen=True, slots=True)
class Setting:
    """One StageRoute configuration (besides seed and beta)."""

    gamma: float
    stages: int
    m_max: int
    alpha: float


# --- worker side ------------------------------------------------------------------------------

_TABLES: dict[tuple[int, ...], RewardTable] = {}
_CEILING = 0.0


def fold_tables(table: RewardTable, n_folds: int, split_seed: int
                ) -> dict[tuple[int, ...], RewardTable]:
    """Every table a split needs: each fold alone (held-out) and each union of the others."""
    order = np.random.default_rng(split_seed).permutation(table.n_rows)
    folds = np.array_split(order, n_folds)
    keys = {(i,) for i in range(n_folds)}
    keys |= {tuple(j for j in range(n_folds) if j != i) for i in range(n_folds)}
    out = {}
    for key in sorted(keys):
        rows = np.sort(np.concatenate([folds[j] for j in key]))
        out[key] = RewardTable(
            models=table.models,
            sample_ids=tuple(table.sample_ids[r] for r in rows),
            tasks=tuple(table.tasks[r] for r in rows),
            scores=table.scores[rows], costs=table.costs[rows],
            source=f"{table.source}#folds{'+'.join(map(str, key))}",
        )
    return out


def _init(n_folds: int, split_seed: int) -> None:
    global _CEILING
    table = load_table(BUNDLED_TABLE)
    _TABLES.update(fold_tables(table, n_folds, split_seed))
    # A known price bound, not a learned quantity: the same for every fold.
    _CEILING = float(np.nanmax(table.costs))


def _run_group(task: tuple[tuple[int, ...], int, float, int, int, float, tuple[float, ...],
                           int]) -> list[dict[str, Any]]:
    """The oracle and StageRoute for each gamma, on one table, seed, beta and (K, M_max, alpha)."""
    key, seed, beta, stages, m_max, alpha, gammas, horizon = task
    table = _TABLES[key]
    stream = Stream(iid_rows(table.n_rows, horizon, seed), default_scenario(table, horizon, stages),
                    alpha)
    base = base_config(table, beta, m_max=m_max, gamma=BASE_GAMMA, seed=seed).model_copy(
        update={"cost_ceiling": _CEILING})
    oracle = run(table, stream, base.model_copy(
        update={"policy": "oracle", "policy_params": {"means": oracle_means(table)}}))
    out = []
    for gamma in gammas:
        result = run(table, stream, base.model_copy(update={"gamma": gamma}),
                     clock=time.perf_counter)
        s = result.summary(oracle)
        out.append({"table": list(key), "seed": seed, "beta": beta, "gamma": gamma,
                    "stages": stages, "m_max": m_max, "alpha": alpha,
                    "pct_of_oracle": s["pct_of_oracle"], "budget_use": s["budget_use"],
                    "avg_reward": s["avg_reward"], "seconds": s["seconds"],
                    "score": s["pct_of_oracle"] - 100.0 * max(0.0, s["budget_use"] - BUDGET_SLACK)})
    return out


# --- driver -----------------------------------------------------------------------------------


def candidates(horizon: int, n_models: int) -> dict[str, dict[str, list[Setting]]]:
    """Per parameter, per candidate label, the settings whose scores are averaged."""
    root = horizon ** (1.0 / 3.0)
    k0 = math.ceil(root - 1e-9)
    theory = default_gamma(horizon, n_models, 0.1)
    gammas = {f"{g:g}": g for g in GAMMAS} | {"log(NT/δ)": theory}
    return {
        "gamma": {label: [Setting(g, k0, BASE_M_MAX, BASE_ALPHA)] for label, g in gammas.items()},
        "K": {label: [Setting(BASE_GAMMA, math.ceil(k - 1e-9), BASE_M_MAX, BASE_ALPHA)]
              for label, k in (("T^(1/3)/2", root / 2), ("T^(1/3)", root),
                               ("2 T^(1/3)", 2 * root))},
        "alpha": {label: [Setting(BASE_GAMMA, k0, m, rule(m)) for m in ALPHA_M_MAX]
                  for label, rule in ALPHA_RULES.items()},
    }


def tasks_for(settings: Sequence[Setting], tables: Sequence[tuple[int, ...]], seeds: Sequence[int],
              horizon: int) -> list[tuple[Any, ...]]:
    """One task per (table, seed, beta, K, M_max, alpha), carrying every gamma it needs."""
    gammas: dict[tuple[int, int, float], set[float]] = defaultdict(set)
    for s in settings:
        gammas[(s.stages, s.m_max, s.alpha)].add(s.gamma)
    tasks = [(key, seed, beta, k, m, a, tuple(sorted(g)), horizon)
             for (k, m, a), g in gammas.items() for key in tables for seed in seeds
             for beta in BETAS]
    return sorted(tasks, key=lambda t: -len(t[6]))  # big groups first: better load balance


def report(records: list[dict[str, Any]], grid: dict[str, dict[str, list[Setting]]],
           n_folds: int) -> dict[str, str]:
    """Print a table per parameter and return the recommended value of each."""
    splits = [((i,), tuple(j for j in range(n_folds) if j != i)) for i in range(n_folds)]
    # Mean score (and reward, budget use) per (table, setting).
    cell: dict[tuple[tuple[int, ...], Setting], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        setting = Setting(r["gamma"], r["stages"], r["m_max"], r["alpha"])
        cell[(tuple(r["table"]), setting)].append(r)

    def mean_of(key: tuple[int, ...], group: list[Setting], field: str) -> float:
        return statistics.fmean(statistics.fmean(r[field] for r in cell[(key, s)])
                                for s in group)

    def _stderr(key: tuple[int, ...], group: list[Setting]) -> float:
        """Standard error of a train score: sd over its seeds x betas runs / sqrt(n)."""
        scores = [r["score"] for s in group for r in cell[(key, s)]]
        return statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0

    recommended: dict[str, str] = {}
    for param, per in grid.items():
        labels = list(per)
        train = {lab: [mean_of(tr, per[lab], "score") for _, tr in splits] for lab in labels}
        held = {lab: [mean_of(te, per[lab], "score") for te, _ in splits] for lab in labels}
        held_reward = {lab: statistics.fmean(mean_of(te, per[lab], "avg_reward")
                                             for te, _ in splits) for lab in labels}
        train_se = {lab: statistics.fmean(_stderr(tr, per[lab]) for _, tr in splits)
                    for lab in labels}
        held_use = {lab: max(r["budget_use"] for te, _ in splits for s in per[lab]
                             for r in cell[(te, s)]) for lab in labels}
        chosen = [max(labels, key=lambda lab, i=i: train[lab][i]) for i in range(n_folds)]
        votes = Counter(chosen)
        extra = ""
        if param == "alpha":
            extra = "".join(f"{f'held-out M={m}':>15}" for m in ALPHA_M_MAX)
        print(f"{param}: values at baseline otherwise")
        print(f"{'value':<14}{'setting':>16}{'train':>9}{'±se':>6}{'held-out':>10}{'held rwd':>10}"
              f"{'max use':>9}{extra}  chosen on folds")
        for lab in labels:
            s0 = per[lab][0]
            desc = {"gamma": f"gamma={s0.gamma:.3g}", "K": f"K={s0.stages}",
                    "alpha": "alpha=" + "/".join(f"{s.alpha:.3g}" for s in per[lab])}[param]
            extra = ""
            if param == "alpha":
                extra = "".join(
                    f"{statistics.fmean(mean_of(te, [s], 'score') for te, _ in splits):>15.2f}"
                    for s in per[lab])
            folds_won = ",".join(str(i) for i, c in enumerate(chosen) if c == lab) or "-"
            print(f"{lab:<14}{desc:>16}{statistics.fmean(train[lab]):>9.2f}{train_se[lab]:>6.2f}"
                  f"{statistics.fmean(held[lab]):>10.2f}{held_reward[lab]:>10.4f}"
                  f"{held_use[lab]:>9.3f}{extra}  {folds_won}")
        for i, lab in enumerate(chosen):
            best_held = max(labels, key=lambda x, i=i: held[x][i])
            print(f"  fold {i}: chose {lab} (train {train[lab][i]:.2f}, held-out "
                  f"{held[lab][i]:.2f}; best held-out would be {best_held}, "
                  f"{held[best_held][i]:.2f})")
        top = max(votes.values())
        tied = [lab for lab in TIE_ORDER[param] if votes.get(lab) == top]
        pick = tied[0]
        reason = WHY.get(pick, "first in the preference order")
        recommended[param] = pick
        how = (f"chosen on {top}/{n_folds} folds" if len(tied) == 1 else
               f"tie at {top}/{n_folds} folds between {', '.join(tied)}; {pick}: {reason}")
        print(f"  -> recommended {param}: {pick} ({how})")
        if param == "alpha":
            print("  note: pct_of_oracle is relative to an oracle under the same caps; tighter "
                  "caps also cap the oracle,\n  so compare 'held rwd' (absolute held-out reward) "
                  "before adopting a tighter rule")
        print()

    return recommended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3, help="disjoint folds (default 3)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..n-1 per table (default 4)")
    parser.add_argument("--horizon", type=int, default=10_000, help="queries T (default 10000)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--split-seed", type=int, default=20250620,
                        help="seed of the row permutation (default 20250620)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every run's score")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="re-print the tables from a --json file instead of running")
    args = parser.parse_args()
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        meta = doc["meta"]
        print(f"Cross-validation tables from {args.from_json}: {meta['folds']} folds, "
              f"T = {meta['horizon']:,}, seeds {meta['seeds']}, beta in {meta['betas']}\n")
        grid = candidates(meta["horizon"], len(load_table(BUNDLED_TABLE).models))
        recommended = report(doc["runs"], grid, meta["folds"])
        print("Recommended defaults: " + ", ".join(f"{p} = {v}" for p, v in recommended.items()))
        return
    if args.folds < 2:
        parser.error("--folds must be >= 2")

    table = load_table(BUNDLED_TABLE)
    horizon, n_folds = args.horizon, args.folds
    seeds = list(range(args.seeds))
    grid = candidates(horizon, len(table.models))
    splits = [((i,), tuple(j for j in range(n_folds) if j != i)) for i in range(n_folds)]
    keys = sorted({k for split in splits for k in split})
    settings = sorted({s for per in grid.values() for group in per.values() for s in group},
                      key=lambda s: (s.stages, s.m_max, s.alpha, s.gamma))
    tasks = tasks_for(settings, keys, seeds, horizon)
    n_runs = sum(1 + len(t[6]) for t in tasks)

    sizes = {k: t.n_rows for k, t in fold_tables(table, n_folds, args.split_seed).items()}
    print(f"Cross-validation: {table.n_rows} rows in {n_folds} folds "
          f"({', '.join(str(sizes[(i,)]) for i in range(n_folds))} rows; permutation seed "
          f"{args.split_seed}); train = the other folds, held-out = the fold")
    print(f"T = {horizon:,}, default schedule, seeds {seeds[0]}..{seeds[-1]}, "
          f"beta in {list(BETAS)}; baseline gamma = {BASE_GAMMA}, K = ceil(T^(1/3)) = "
          f"{math.ceil(horizon ** (1 / 3) - 1e-9)}, M_max = {BASE_M_MAX}, alpha = {BASE_ALPHA}")
    print(f"score = pct_of_oracle - 100 * max(0, budget_use - {BUDGET_SLACK}), mean over seeds x "
          f"betas; same-config oracle")

    # Calibrate: one StageRoute run (with its oracle) in this process, to size the whole grid.
    _init(n_folds, args.split_seed)
    t0 = time.perf_counter()
    _run_group((keys[0], 0, BETAS[0], settings[0].stages, BASE_M_MAX, BASE_ALPHA,
                (BASE_GAMMA,), horizon))
    per_run = (time.perf_counter() - t0) / 2
    workers = max(1, args.workers)
    print(f"calibration: one T = {horizon:,} run takes {per_run:.2f} s; {n_runs} runs "
          f"({len(settings)} settings + oracles, {len(keys)} tables) over {workers} processes "
          f"-> about {n_runs * per_run / workers / 60:.1f} min\n")

    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    ctx = mp.get_context("fork" if sys.platform != "win32" else "spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(n_folds, args.split_seed)) as pool, \
            tqdm(total=n_runs, unit="run", file=sys.stderr, smoothing=0.1) as bar:
        for out in pool.imap_unordered(_run_group, tasks):
            records.extend(out)
            bar.update(1 + len(out))
    elapsed = time.perf_counter() - started

    recommended = report(records, grid, n_folds)
    print("Recommended defaults: " + ", ".join(f"{p} = {v}" for p, v in recommended.items()))
    print(f"{len(records)} StageRoute runs (+ oracles) in {elapsed / 60:.1f} min on "
          f"{workers} processes")
    if args.json:
        meta = {"folds": n_folds, "split_seed": args.split_seed, "seeds": seeds,
                "horizon": horizon, "betas": list(BETAS), "recommended": recommended}
        args.json.write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

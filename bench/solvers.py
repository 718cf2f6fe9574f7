"""Solver benchmark: RouteOPT (exact) vs GLOP, and DeployOPT vs the plain SCIP MIP.

    python -m bench.solvers [--repeats 300] [--seed 0]

Prints, from one run on this machine:
* RouteOPT median microseconds per solve, ours vs ``route_opt_reference`` (GLOP), and the ratio,
  for M = 4, 8, 16, 32 on random instances where the budget binds; both optima are compared.
* DeployOPT milliseconds for N = 100, 1,000, 10,000 candidates with m_max = 32, for loose caps
  (the LP shortcut applies) and tight caps (the MIP runs), against the plain MIP over every
  candidate (no pruning) where that finishes within its time limit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.reference import route_opt_reference
from solvers import deploy_opt, route_opt
from solvers.deploy_opt import _mip_support


def _route_instance(rng: np.random.Generator, m: int) -> tuple[np.ndarray, ...]:
    mu = rng.random(m)
    cost = rng.random(m)
    alpha = rng.uniform(1.5 / m, 1.0, m)
    # A budget between the cheapest and the reward-greedy mix, so the budget constraint binds.
    budget = float(np.quantile(cost, 0.4))
    return mu, cost, alpha, np.float64(budget)


def bench_route(repeats: int, seed: int, inner: int = 10) -> None:
    print("RouteOPT: median us per solve (same instances, same run)")
    print(f"{'M':>4} {'exact':>10} {'GLOP':>10} {'speed-up':>9} {'max |obj diff|':>15}")
    for m in (4, 8, 16, 32):
        rng = np.random.default_rng(seed + m)
        cases = [_route_instance(rng, m) for _ in range(repeats)]
        t_exact, t_ref, diff = [], [], 0.0
        for mu, cost, alpha, budget in cases:
            # Each instance is solved `inner` times back to back by each solver and the per-solve
            # mean is kept; the median over instances is printed.
            t0 = time.perf_counter()
            for _ in range(inner):
                a = route_opt(mu, cost, alpha, float(budget))
            t1 = time.perf_counter()
            for _ in range(inner):
                r = route_opt_reference(mu, cost, alpha, float(budget))
            t2 = time.perf_counter()
            t_exact.append((t1 - t0) / inner)
            t_ref.append((t2 - t1) / inner)
            diff = max(diff, abs(a.objective - r.objective))
        e, g = statistics.median(t_exact) * 1e6, statistics.median(t_ref) * 1e6
        print(f"{m:>4} {e:>10.1f} {g:>10.1f} {g / e:>8.1f}x {diff:>15.2e}")


def bench_deploy(seed: int, reference_limit_s: float) -> None:
    print(f"\nDeployOPT: m_max = 32, milliseconds (plain MIP: SCIP over all N, "
          f"time limit {reference_limit_s:.0f} s)")
    print(f"{'N':>6} {'caps':>6} {'ours ms':>9} {'status':>10} {'plain MIP ms':>13} "
          f"{'obj diff':>9}")
    for n in (100, 1_000, 10_000):
        for label, lo, hi in (("loose", 0.05, 0.5), ("tight", 0.01, 0.05)):
            rng = np.random.default_rng(seed + n)
            mu, cost = rng.random(n), rng.random(n)
            alpha = rng.uniform(lo, hi, n)
            t0 = time.perf_counter()
            sol = deploy_opt(mu, cost, alpha, 0.3, 32)
            ours_ms = (time.perf_counter() - t0) * 1e3
            ref_ms, diff = "-", "-"
            if n <= 1_000:
                t0 = time.perf_counter()
                support = _mip_support(mu.tolist(), cost.tolist(), alpha.tolist(), 0.3, 32)
                ref_ms = f"{(time.perf_counter() - t0) * 1e3:.0f}"
                if support is not None:
                    sub = route_opt(mu[support], cost[support], alpha[support], 0.3)
                    diff = f"{abs(sub.objective - sol.objective):.1e}"
            print(f"{n:>6} {label:>6} {ours_ms:>9.1f} {sol.status:>10} "
                  f"{ref_ms:>13} {diff:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=300, help="instances per M (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bench_route(args.repeats, args.seed)
    bench_deploy(args.seed, reference_limit_s=60.0)


if __name__ == "__main__":
    main()

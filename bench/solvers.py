"""Solver benchmark: RouteOPT (exact) vs GLOP, DeployOPT vs the plain SCIP MIP, and the
contextual programs (ContextLP vs GLOP, ContextDeployOPT vs the plain SCIP MIP).

    python -m bench.solvers [--repeats 300] [--seed 0]

Prints, from one run on this machine:
* RouteOPT median microseconds per solve, ours vs ``route_opt_reference`` (GLOP), and the ratio,
  for M = 4, 8, 16, 32 on random instances where the budget binds; both optima are compared.
* DeployOPT milliseconds for N = 100, 1,000, 10,000 candidates with m_max = 32, for loose caps
  (the LP shortcut applies) and tight caps (the MIP runs), against the plain MIP over every
  candidate (no pruning) where that finishes within its time limit.
* ContextLP median milliseconds over 41 contexts x M = 4, 8, 16 models, ours vs
  ``context_lp_reference`` (GLOP), and ContextDeployOPT median milliseconds over 41 contexts x
  N = 11 and 16 candidates with K = 4 and 8, against the plain MIP (SCIP over every candidate,
  the support's plan by ContextLP); both optima are compared.  Instances are shaped like the
  engine's at a stage start: a quality per model shifted per context, costs spread 100x
  between models, the budget at 0.3x the dearest mean cost, equal shares 1/K (every share
  binds) or 0.5.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.reference import context_lp_reference, route_opt_reference
from solvers import context_deploy_opt, context_lp, deploy_opt, route_opt
from solvers.context_deploy import _mip_support as _context_mip_support
from solvers.deploy_opt import _mip_support

CONTEXTS = 41


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


def _context_instance(rng: np.random.Generator, n: int, share: float,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    quality = rng.uniform(0.3, 0.9, n)
    mu = np.clip(quality[None, :] + rng.normal(0.0, 0.15, (CONTEXTS, n)), 0.0, 1.0)
    price = np.exp(rng.uniform(np.log(1e-5), np.log(1e-3), n))
    cost = price[None, :] * rng.lognormal(0.0, 0.3, (CONTEXTS, n))
    freq = rng.dirichlet(np.ones(CONTEXTS))
    budget = 0.3 * float(cost.mean(axis=0).max())
    return mu, cost, freq, np.full(n, share), budget


def _timed(solve: Callable[..., Any], *args: Any, inner: int = 3) -> tuple[Any, float]:
    """``solve(*args)`` and its median milliseconds over ``inner`` runs."""
    times = []
    for _ in range(inner):
        t0 = time.perf_counter()
        result = solve(*args)
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times) * 1e3


def bench_context(repeats: int, seed: int) -> None:
    print(f"\nContextLP: {CONTEXTS} contexts, median ms per solve (same instances, same run)")
    print(f"{'M':>4} {'ours':>8} {'GLOP':>8} {'speed-up':>9} {'max |obj diff|':>15}")
    for m in (4, 8, 16):
        rng = np.random.default_rng(seed + m)
        ours, ref, diff = [], [], 0.0
        for _ in range(repeats):
            instance = _context_instance(rng, m, 1.5 / m)
            solution, ours_ms = _timed(context_lp, *instance)
            (value, _), ref_ms = _timed(context_lp_reference, *instance)
            ours.append(ours_ms)
            ref.append(ref_ms)
            diff = max(diff, abs(solution.objective - value))
        o, r = statistics.median(ours), statistics.median(ref)
        print(f"{m:>4} {o:>8.2f} {r:>8.2f} {r / o:>8.1f}x {diff:>15.2e}")

    print(f"\nContextDeployOPT: {CONTEXTS} contexts, median (max) ms per solve; plain MIP: "
          f"SCIP over every candidate")
    print(f"{'N':>4} {'K':>3} {'shares':>7} {'ours':>16} {'plain MIP':>16} {'max obj diff':>13}")
    for n in (11, 16):
        for k in (4, 8):
            for label, share in (("1/K", 1.0 / k), ("0.5", 0.5)):
                rng = np.random.default_rng(seed + 100 * n + k)
                ours, ref, diff = [], [], 0.0
                for _ in range(max(1, repeats // 4)):
                    mu, cost, freq, alpha, budget = _context_instance(rng, n, share)
                    t0 = time.perf_counter()
                    sol = context_deploy_opt(mu, cost, freq, alpha, budget, k)
                    ours.append((time.perf_counter() - t0) * 1e3)
                    t0 = time.perf_counter()
                    support = _context_mip_support(mu, cost, freq, alpha, budget, k)
                    ref.append((time.perf_counter() - t0) * 1e3)
                    if support is not None:
                        plain = context_lp(mu[:, support], cost[:, support], freq,
                                           alpha[support], budget)
                        diff = max(diff, plain.objective - sol.objective)
                cell = [f"{statistics.median(t):.1f} ({max(t):.0f})" for t in (ours, ref)]
                print(f"{n:>4} {k:>3} {label:>7} {cell[0]:>16} {cell[1]:>16} {diff:>13.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=300, help="instances per M (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bench_route(args.repeats, args.seed)
    bench_deploy(args.seed, reference_limit_s=60.0)
    bench_context(max(4, args.repeats // 10), args.seed)


if __name__ == "__main__":
    main()

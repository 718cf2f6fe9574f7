"""DeployOPT: which of the live candidate models to deploy for the next stage.

Program (StageRoute Eq. 3), over the N live candidates, with K = min(m_max, N)::

    maximise    sum_m d_m * mu_m                                (1) optimistic reward
    subject to  sum_m d_m = 1                                   (2)
                sum_m d_m * c_m <= b                            (3) per-query cost budget
                0 <= d_m <= alpha_m * z_m                       (4) throughput shares
                sum_m z_m <= K,  z_m in {0, 1}                  (5) concurrency limit

The deployment set is the support of ``d`` (``z`` where ``d > 0``); ``d`` itself is not used for
routing.  When the optimum needs fewer than K models the free slots are filled first with the
models that cost at most the budget, most optimistic first (highest ``mu``, then lowest ``c``,
then lowest index), then with the rest, cheapest first: a free slot helps routing only with a
model it can afford, and an unaffordable one can only add spend.  Filling costs nothing (``d = 0``
there) and can only help routing, whose feasible set grows with the deployed set.  So exactly K
models are always deployed.

Solution method, each step exact:

a. ``K == N``: everything is deployed; ``d`` is RouteOPT over all candidates.
b. Dominance pruning.  Model j is dropped when at least K other models each have
   ``mu >= mu_j``, ``c <= c_j`` and ``alpha >= alpha_j`` (ties broken by index).  Any optimal
   ``d`` that uses j leaves one of those dominators unused (j takes a slot, at most K - 1 remain),
   and moving ``d_j`` onto it keeps (2)-(5) and does not lower (1).
c. The LP relaxation (RouteOPT over the survivors, exact): if its support has at most K models
   it satisfies (5) and is optimal.
d. Otherwise the MIP (1)-(5) over the survivors with SCIP.  Its support is then re-solved with
   RouteOPT so that ``d`` and the objective are exact rather than within SCIP's tolerances
   (over the whole K-model selection if the support met the caps only within them; if that
   selection cannot carry all traffic either, no K-model mix fits: see the fallbacks below).

Infeasible instances never raise:

* the K largest shares sum to less than 1: every share is scaled by the least factor that lets K
  models carry all traffic (status prefix ``caps_``), as RouteOPT does;
* no K-model mix meets the budget: the K cheapest models (ties to higher ``mu``) are deployed and
  ``d`` is RouteOPT's cheapest mix over them (status ``budget_infeasible``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from ortools.linear_solver import pywraplp

from solvers.route_opt import (
    BUDGET_INFEASIBLE,
    CAPS_BUDGET_INFEASIBLE,
    CAPS_INFEASIBLE,
    OPTIMAL,
    solve_lists,
    validate_instance,
)

# Weights below this are "not used" when reading a solver's support.
_SUPPORT_TOL: Final = 1e-9
# Rows per block in the O(N^2) dominance count; bounds its memory to ~ 2048 * N bytes per mask.
_BLOCK: Final = 2048


@dataclass(frozen=True, slots=True)
class DeploySolution:
    """``selected``: sorted candidate indices (exactly K); ``d``: weights in input order."""

    selected: tuple[int, ...]
    d: NDArray[np.float64]
    objective: float
    status: str


def deploy_opt(
    mu_u: ArrayLike, c_l: ArrayLike, alpha: ArrayLike, budget: float, m_max: int
) -> DeploySolution:
    """Solve DeployOPT; see the module docstring for the program, the method and the fallbacks."""
    mu, cost, caps, b = validate_instance(mu_u, c_l, alpha, budget)
    if isinstance(m_max, bool) or not isinstance(m_max, (int, np.integer)) or m_max < 1:
        raise ValueError(f"m_max: must be an integer >= 1, got {m_max!r}")
    n = len(mu)
    k = min(int(m_max), n)

    caps_ok = True
    top_k_caps = math.fsum(sorted(caps, reverse=True)[:k])
    if top_k_caps < 1.0 - 1e-12:
        caps_ok = False
        caps = [a / top_k_caps for a in caps] if top_k_caps > 0 else [1.0] * n

    support, d_support, status = _solve_support(mu, cost, caps, b, k)
    d = np.zeros(n)
    d[list(support)] = d_support
    if not caps_ok:
        status = CAPS_BUDGET_INFEASIBLE if status == BUDGET_INFEASIBLE else CAPS_INFEASIBLE
    selected = fill_slots(support, mu, cost, b, k)
    return DeploySolution(
        selected=selected,
        d=d,
        objective=math.fsum(d[i] * mu[i] for i in support),
        status=status,
    )


def _solve_support(
    mu: list[float], cost: list[float], caps: list[float], b: float, k: int
) -> tuple[list[int], list[float], str]:
    """(support indices, their weights, status) of an optimal d with at most k models."""
    n = len(mu)
    if k == n:
        return _polish(list(range(n)), mu, cost, caps, b)

    kept = _undominated(mu, cost, caps, k)
    sub = [mu[i] for i in kept], [cost[i] for i in kept], [caps[i] for i in kept]
    p, status = solve_lists(*sub, b)
    if status == OPTIMAL:
        support = [kept[j] for j, w in enumerate(p) if w > 0.0]
        if len(support) <= k:
            return support, [p[j] for j, w in enumerate(p) if w > 0.0], OPTIMAL
        mip_support = _mip_support(*sub, b, k)
        if mip_support is not None:
            polished = _polish([kept[j] for j in mip_support], mu, cost, caps, b)
            if polished[2] not in (OPTIMAL, BUDGET_INFEASIBLE):
                # SCIP's support met the caps only within its tolerance (a cap of 1 - 1e-7
                # carrying all traffic, say): solve exactly over the whole k-model selection.
                polished = _polish(list(fill_slots(polished[0], mu, cost, b, k)), mu, cost,
                                   caps, b)
            if polished[2] in (OPTIMAL, BUDGET_INFEASIBLE):
                return polished

    cheapest = sorted(range(n), key=lambda i: (cost[i], -mu[i], i))[:k]
    support, weights, _ = _polish(sorted(cheapest), mu, cost, caps, b)
    return support, weights, BUDGET_INFEASIBLE


def _polish(
    support: list[int], mu: list[float], cost: list[float], caps: list[float], b: float
) -> tuple[list[int], list[float], str]:
    """Exact weights on a fixed support via RouteOPT."""
    p, status = solve_lists([mu[i] for i in support], [cost[i] for i in support],
                            [caps[i] for i in support], b)
    return support, p, status


def _undominated(mu: list[float], cost: list[float], caps: list[float], k: int) -> list[int]:
    """Indices of models with fewer than k dominators (see step b of the module docstring).

    Each coordinate is turned into a strict rank with ties broken by index; "better rank in all
    three" implies dominance, so counting it undercounts dominators and pruning stays exact.
    """
    n = len(mu)
    idx = np.arange(n)
    mu_a, cost_a, caps_a = np.array(mu), np.array(cost), np.array(caps)
    rank_mu = np.empty(n, dtype=np.int32)
    rank_c = np.empty(n, dtype=np.int32)
    rank_a = np.empty(n, dtype=np.int32)
    rank_mu[np.lexsort((idx, -mu_a))] = idx
    rank_c[np.lexsort((idx, cost_a))] = idx
    rank_a[np.lexsort((idx, -caps_a))] = idx
    # Visit models best-mu first: a model's dominators all come before it in this order.
    order = np.argsort(rank_mu)
    r_c, r_a = rank_c[order], rank_a[order]
    keep = np.zeros(n, dtype=bool)
    keep[:k] = True  # the first k in mu order have fewer than k possible dominators
    for start in range(k, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        rows_c = r_c[start:stop, None]
        rows_a = r_a[start:stop, None]
        dominated_by = (r_c[None, :stop] < rows_c) & (r_a[None, :stop] < rows_a)
        # Only columns before each row count (better mu); mask the rest of the block.
        dominated_by &= idx[None, :stop] < idx[start:stop, None]
        keep[start:stop] = dominated_by.sum(axis=1) < k
    return sorted(int(i) for i in order[keep])


def _mip_support(
    mu: list[float], cost: list[float], caps: list[float], b: float, k: int
) -> list[int] | None:
    """Support of an optimal d for (1)-(5) by SCIP, or None when the MIP is infeasible."""
    solver = pywraplp.Solver.CreateSolver("SCIP")
    if solver is None:
        raise RuntimeError("OR-Tools was built without SCIP")
    d = [solver.NumVar(0.0, cap, f"d{i}") for i, cap in enumerate(caps)]
    z = [solver.BoolVar(f"z{i}") for i in range(len(mu))]
    for d_i, z_i, cap in zip(d, z, caps):
        solver.Add(d_i <= cap * z_i)
    solver.Add(solver.Sum(d) == 1.0)
    solver.Add(solver.Sum([c * v for c, v in zip(cost, d)]) <= b)
    solver.Add(solver.Sum(z) <= k)
    solver.Maximize(solver.Sum([u * v for u, v in zip(mu, d)]))
    if not solve_mip(solver, "DeployOPT"):
        return None
    return [i for i, (d_i, z_i) in enumerate(zip(d, z))
            if z_i.solution_value() > 0.5 and d_i.solution_value() > _SUPPORT_TOL]


def solve_mip(solver: pywraplp.Solver, program: str) -> bool:
    """Solve to proven optimality; False if infeasible, ``RuntimeError`` on any other status."""
    # pywraplp's default relative gap (1e-4) stops at near-optimal supports; ask for optimal.
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, 0.0)
    status = solver.Solve(params)
    if status == pywraplp.Solver.INFEASIBLE:
        return False
    if status != pywraplp.Solver.OPTIMAL:
        raise RuntimeError(f"SCIP returned status {status} on {program}")
    return True


def fill_slots(support: list[int], mu: list[float], cost: list[float], b: float,
                k: int) -> tuple[int, ...]:
    """The support plus, up to exactly k, affordable models most optimistic first, then the
    others cheapest first; sorted."""
    chosen = set(support)
    if len(chosen) < k:
        rest = sorted((i for i in range(len(mu)) if i not in chosen),
                      key=lambda i: (False, -mu[i], cost[i], i) if cost[i] <= b
                      else (True, cost[i], -mu[i], i))
        chosen.update(rest[: k - len(chosen)])
    return tuple(sorted(chosen))

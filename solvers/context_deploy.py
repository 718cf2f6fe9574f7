"""ContextDeployOPT: the deployment set that best serves the mix of contexts.

Program, over the N live candidates, contexts ``x`` with frequencies ``f_x`` (summing to 1) and
K = min(m_max, N)::

    maximise    sum_x f_x sum_m p_xm mu_xm                              (1)
    subject to  sum_m p_xm = 1                          for every x     (2)
                sum_x f_x p_xm <= alpha_m z_m           for every m     (3)
                sum_x f_x sum_m p_xm c_xm <= b                          (4)
                0 <= p_xm <= z_m,  sum_m z_m <= K,  z_m in {0, 1}       (5)

With the deployment set fixed this is ContextLP (``solvers.context_lp``), whose optimum is the
plan the engine routes by; with one context it is DeployOPT.  The deployment set is ``z``.

Solution method, each step exact (as DeployOPT's):

a. ``K == N``: everything is deployed; ContextLP over all candidates.
b. Dominance pruning.  Model j is dropped when at least K others each have, in every context,
   ``mu_x >= mu_xj`` and ``c_x <= c_xj``, and ``alpha >= alpha_j`` (a model equal to j in all
   of these dominates it if its index is lower).  An optimal plan that uses j leaves one of
   those dominators unused (j takes a slot, at most K - 1 remain); moving j's mass onto it,
   context by context, keeps (2)-(5) and does not lower (1).
c. The relaxation without (5), ContextLP over the survivors: if it uses at most K models it
   satisfies (5) and is optimal.
d. Otherwise the MIP (1)-(5) over the survivors with SCIP.
e. Free slots (when the optimum needs fewer than K models) are filled as DeployOPT fills them,
   by the traffic-averaged scores ``sum_x f_x mu_xm`` and ``sum_x f_x c_xm``: affordable models
   most optimistic first, then the rest cheapest first.  Filling costs nothing.

The plan returned is ContextLP over the selected set, so it is exact (not within SCIP's
tolerances) and ``objective`` is its value.

Infeasible instances never raise:

* the K largest shares sum to less than 1: every share is scaled by the least factor that lets
  K models carry all traffic (status prefix ``caps_``);
* no K-model plan meets the budget: the K models cheapest on average (ties to the higher
  average reward) are deployed with ContextLP's cheapest plan over them (status
  ``budget_infeasible``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from ortools.linear_solver import pywraplp

from solvers.context_lp import context_lp
from solvers.deploy_opt import fill_slots, solve_mip
from solvers.route_opt import (
    BUDGET_INFEASIBLE,
    CAPS_BUDGET_INFEASIBLE,
    CAPS_INFEASIBLE,
    OPTIMAL,
)

FloatArray = NDArray[np.float64]

# Traffic below this is "not used" when reading a plan's or SCIP's support.
_SUPPORT_TOL: Final = 1e-9


@dataclass(frozen=True, slots=True)
class ContextDeploySolution:
    """``selected``: sorted candidate indices (exactly K); ``p``: the plan, ``(contexts, K)``,
    columns in ``selected`` order; ``objective`` its value (1); ``status`` as DeployOPT's."""

    selected: tuple[int, ...]
    p: FloatArray
    objective: float
    status: str


def context_deploy_opt(mu: ArrayLike, cost: ArrayLike, freq: ArrayLike, alpha: ArrayLike,
                       budget: float, m_max: int) -> ContextDeploySolution:
    """Solve ContextDeployOPT; see the module docstring for the program, method, fallbacks."""
    mu_a = np.array(mu, dtype=np.float64, ndmin=2)
    cost_a = np.array(cost, dtype=np.float64, ndmin=2)
    f = np.array(freq, dtype=np.float64)
    caps = np.array(alpha, dtype=np.float64)
    if isinstance(m_max, bool) or not isinstance(m_max, (int, np.integer)) or m_max < 1:
        raise ValueError(f"m_max: must be an integer >= 1, got {m_max!r}")
    n = mu_a.shape[1]
    k = min(int(m_max), n)
    caps_ok = True
    top_k = math.fsum(sorted(caps.tolist(), reverse=True)[:k])
    if top_k < 1.0 - 1e-12:
        caps_ok = False
        caps = caps / top_k if top_k > 0 else np.ones(n)

    support, infeasible = _support(mu_a, cost_a, f, caps, budget, k)
    avg_mu = _traffic_average(f, mu_a)
    avg_cost = _traffic_average(f, cost_a)
    if infeasible:
        support = sorted(sorted(range(n), key=lambda i: (avg_cost[i], -avg_mu[i], i))[:k])
    selected = fill_slots(support, avg_mu, avg_cost, budget, k)
    cols = list(selected)
    plan = context_lp(mu_a[:, cols], cost_a[:, cols], f, caps[cols], budget)
    scaled = not caps_ok or plan.status in (CAPS_INFEASIBLE, CAPS_BUDGET_INFEASIBLE)
    if infeasible or plan.status in (BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE):
        status = CAPS_BUDGET_INFEASIBLE if scaled else BUDGET_INFEASIBLE
    else:
        status = CAPS_INFEASIBLE if scaled else OPTIMAL
    return ContextDeploySolution(selected, plan.p, plan.objective, status)


def _traffic_average(f: FloatArray, values: FloatArray) -> list[float]:
    """``sum_x f_x values[x, m]`` per model, summed exactly (no BLAS)."""
    return [math.fsum((f * values[:, m]).tolist()) for m in range(values.shape[1])]


def _support(mu: FloatArray, cost: FloatArray, f: FloatArray, caps: FloatArray, budget: float,
             k: int) -> tuple[list[int], bool]:
    """(indices of an optimal plan's models, at most k; whether no plan meets the budget)."""
    n = mu.shape[1]
    if k == n:
        relaxed = context_lp(mu, cost, f, caps, budget)
        return list(range(n)), relaxed.status not in (OPTIMAL, CAPS_INFEASIBLE)
    kept = _undominated(mu, cost, caps, k)
    relaxed = context_lp(mu[:, kept], cost[:, kept], f, caps[kept], budget)
    if relaxed.status not in (OPTIMAL, CAPS_INFEASIBLE):
        return [], True
    used = [kept[j] for j in range(len(kept)) if relaxed.p[:, j].max() > _SUPPORT_TOL]
    if len(used) <= k:
        return used, False
    chosen = _mip_support(mu[:, kept], cost[:, kept], f, caps[kept], budget, k)
    if chosen is None:
        return [], True
    return [kept[j] for j in chosen], False


def _undominated(mu: FloatArray, cost: FloatArray, caps: FloatArray, k: int) -> list[int]:
    """Indices of models with fewer than k dominators (step b of the module docstring)."""
    n = mu.shape[1]
    if n <= k:
        return list(range(n))
    # better[i, j]: i is at least as good as j everywhere.
    better = (np.all(mu[:, :, None] >= mu[:, None, :], axis=0)
              & np.all(cost[:, :, None] <= cost[:, None, :], axis=0)
              & (caps[:, None] >= caps[None, :]))
    equal = (np.all(mu[:, :, None] == mu[:, None, :], axis=0)
             & np.all(cost[:, :, None] == cost[:, None, :], axis=0)
             & (caps[:, None] == caps[None, :]))
    index = np.arange(n)
    # A twin dominates only the twins after it: the relation stays a strict order.
    dominates = better & ~(equal & (index[:, None] >= index[None, :]))
    return [int(j) for j in np.flatnonzero(dominates.sum(axis=0) < k)]


def _mip_support(mu: FloatArray, cost: FloatArray, f: FloatArray, caps: FloatArray,
                 budget: float, k: int) -> list[int] | None:
    """Models of an optimal plan for (1)-(5) by SCIP, or None when it is infeasible."""
    solver = pywraplp.Solver.CreateSolver("SCIP")
    if solver is None:
        raise RuntimeError("OR-Tools was built without SCIP")
    n_ctx, n = mu.shape
    scale = budget if budget > 0.0 else 1.0
    z = [solver.BoolVar(f"z{m}") for m in range(n)]
    p = [[solver.NumVar(0.0, 1.0, f"p{x}_{m}") for m in range(n)] for x in range(n_ctx)]
    objective = solver.Objective()
    spend = solver.Constraint(-solver.infinity(), 1.0)
    for x in range(n_ctx):
        row = solver.Constraint(1.0, 1.0)
        for m in range(n):
            row.SetCoefficient(p[x][m], 1.0)
            solver.Add(p[x][m] <= z[m])
            spend.SetCoefficient(p[x][m], float(f[x] * cost[x, m] / scale))
            objective.SetCoefficient(p[x][m], float(f[x] * mu[x, m]))
    for m in range(n):
        share = solver.Constraint(-solver.infinity(), 0.0)
        for x in range(n_ctx):
            share.SetCoefficient(p[x][m], float(f[x]))
        share.SetCoefficient(z[m], -float(caps[m]))
    slots = solver.Constraint(0.0, float(k))
    for z_m in z:
        slots.SetCoefficient(z_m, 1.0)
    objective.SetMaximization()
    if not solve_mip(solver, "ContextDeployOPT"):
        return None
    return [m for m in range(n) if z[m].solution_value() > 0.5
            and max(p[x][m].solution_value() for x in range(n_ctx)) > _SUPPORT_TOL]

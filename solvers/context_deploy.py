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
d. Otherwise the MIP (1)-(5) over the survivors.  When the survivors have at most
   ``_MAX_SUBSETS`` K-subsets, by a best-first search over them (``_best_subset``): every
   subset S has the Lagrangian bound

       D(S; pi, beta) = sum_x f_x max_{m in S} (mu_xm - pi_m - beta c_xm)
                        + sum_{m in S} alpha_m pi_m + beta b   >=   ContextLP(S)

   for any share prices ``pi >= 0`` and budget price ``beta >= 0`` (weak duality: relax (3)
   and (4) with those multipliers; the rest puts each context on its best model of S).  Each
   subset's bound is the least over the prices of the relaxation and of every subset solved
   so far; the subset with the highest bound is solved exactly by ContextLP, until no bound
   exceeds the best value found by more than ``_TIE`` (1e-12: the set is optimal to within
   that plus ContextLP's rounding, tighter than SCIP's tolerances).  Subsets whose shares
   cannot carry all traffic, or whose ContextLP misses the budget, are infeasible for (3)-(4).
   Larger instances go to SCIP (optimal within its feasibility and optimality tolerances, of
   order 1e-7 to 1e-6, at a relative gap of 0).
e. Free slots (when the optimum needs fewer than K models) are filled as DeployOPT fills them,
   by the traffic-averaged scores ``sum_x f_x mu_xm`` and ``sum_x f_x c_xm``: affordable models
   most optimistic first, then the rest cheapest first.  Filling costs nothing.

The plan returned is an optimum of ContextLP over the selected set, so it is exact (not within
SCIP's tolerances) and ``objective`` is its value (``math.fsum`` of ``f p mu`` over the
selected columns).  It is solved afresh unless one of the ContextLP solves above already is
that program or provably has the same optimum (``_reuse``):

* ``K == N``: step a solved ContextLP over all candidates with the same shares: the same
  program, whatever its status.
* Otherwise, when the plan of step c (the relaxation) or d (the best subset) is OPTIMAL (the
  shares were not scaled, the budget is met), every column outside ``selected`` is exactly 0,
  and the selected shares sum to at least 1 - 1e-12 (so ContextLP over ``selected`` does not
  scale them either, and solves (1)-(4) with exactly these shares): that plan restricted to the
  selected columns is feasible for ContextLP over ``selected`` and has the same value.  No plan
  over ``selected`` is worth more: ``selected`` has K models, so such a plan is feasible for
  (1)-(5) over all candidates, whose optimum equals (1)-(5) over the survivors (step b), which
  is at most the relaxation's value (step c), or equals the best subset's value (step d).
  So the restriction is an optimum of ContextLP over ``selected`` with the same objective,
  though where that LP is degenerate it may be another optimal vertex than a fresh solve's.

Infeasible instances never raise:

* the K largest shares sum to less than 1: every share is scaled by the least factor that lets
  K models carry all traffic (status prefix ``caps_``);
* no K-model plan meets the budget: the K models cheapest on average (ties to the higher
  average reward) are deployed with ContextLP's cheapest plan over them (status
  ``budget_infeasible``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from ortools.linear_solver import pywraplp

from solvers.context_lp import ContextPlanSolution, context_lp, plan_value, traffic_average
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
#: Step d searches the K-subsets itself when there are at most this many, else runs SCIP.
_MAX_SUBSETS: Final = 1000
#: A subset whose bound exceeds the best value found by at most this is not solved (a tie).
_TIE: Final = 1e-12


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

    support, infeasible, solved = _support(mu_a, cost_a, f, caps, budget, k)
    avg_mu = traffic_average(f, mu_a)
    avg_cost = traffic_average(f, cost_a)
    if infeasible:
        support = sorted(sorted(range(n), key=lambda i: (avg_cost[i], -avg_mu[i], i))[:k])
    selected = fill_slots(support, avg_mu, avg_cost, budget, k)
    cols = list(selected)
    reused = _reuse(solved, cols, mu_a, f, caps, k == n)
    if reused is None:
        plan = context_lp(mu_a[:, cols], cost_a[:, cols], f, caps[cols], budget)
        p, objective, plan_status = plan.p, plan.objective, plan.status
    else:
        p, objective, plan_status = reused
    scaled = not caps_ok or plan_status in (CAPS_INFEASIBLE, CAPS_BUDGET_INFEASIBLE)
    if infeasible or plan_status in (BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE):
        status = CAPS_BUDGET_INFEASIBLE if scaled else BUDGET_INFEASIBLE
    else:
        status = CAPS_INFEASIBLE if scaled else OPTIMAL
    return ContextDeploySolution(selected, p, objective, status)


#: A ContextLP solve made on the way: its columns (candidate indices) and its solution.
_Solved = tuple[list[int], ContextPlanSolution]


def _reuse(solved: _Solved | None, cols: list[int], mu: FloatArray, f: FloatArray,
           caps: FloatArray, everything: bool) -> tuple[FloatArray, float, str] | None:
    """``(p, objective, status)`` of ContextLP over ``cols`` read off ``solved`` where the
    module docstring shows it to be an optimum of that program; None where it must be
    solved."""
    if solved is None:
        return None
    solved_cols, solution = solved
    if everything:  # step a: the same program (same columns, same shares)
        assert solved_cols == cols
        return solution.p, solution.objective, solution.status
    if solution.status != OPTIMAL or math.fsum(caps[cols].tolist()) < 1.0 - 1e-12:
        return None
    position = {c: i for i, c in enumerate(cols)}
    p = np.zeros((solution.p.shape[0], len(cols)))
    for j, c in enumerate(solved_cols):
        column = solution.p[:, j]
        if c in position:
            p[:, position[c]] = column
        elif np.any(column != 0.0):
            return None
    return p, plan_value(f, p, mu[:, cols]), OPTIMAL


def _support(mu: FloatArray, cost: FloatArray, f: FloatArray, caps: FloatArray, budget: float,
             k: int) -> tuple[list[int], bool, _Solved | None]:
    """(indices of an optimal plan's models, at most k; whether no plan meets the budget; the
    ContextLP solve that gave them, if one did)."""
    n = mu.shape[1]
    if k == n:
        relaxed = context_lp(mu, cost, f, caps, budget)
        infeasible = relaxed.status not in (OPTIMAL, CAPS_INFEASIBLE)
        return list(range(n)), infeasible, (list(range(n)), relaxed)
    kept = _undominated(mu, cost, caps, k)
    relaxed = context_lp(mu[:, kept], cost[:, kept], f, caps[kept], budget)
    if relaxed.status not in (OPTIMAL, CAPS_INFEASIBLE):
        return [], True, None
    used = [kept[j] for j in range(len(kept)) if relaxed.p[:, j].max() > _SUPPORT_TOL]
    if len(used) <= k:
        return used, False, (kept, relaxed)
    sub = (mu[:, kept], cost[:, kept], f, caps[kept], budget, k)
    if math.comb(len(kept), k) <= _MAX_SUBSETS and relaxed.status == OPTIMAL:
        best = _best_subset(*sub, relaxed)
        if best is None:
            return [], True, None
        chosen, solution = best
        cols = [kept[j] for j in chosen]
        used = [cols[j] for j in range(k) if solution.p[:, j].max() > _SUPPORT_TOL]
        return used, False, (cols, solution)
    mip = _mip_support(*sub)
    if mip is None:
        return [], True, None
    return [kept[j] for j in mip], False, None


def _best_subset(mu: FloatArray, cost: FloatArray, f: FloatArray, caps: FloatArray,
                 budget: float, k: int, relaxed: ContextPlanSolution,
                 ) -> tuple[list[int], ContextPlanSolution] | None:
    """The k-subset with the best ContextLP value and its solution (step d of the module
    docstring), or None when no k-subset's plan meets the budget.  ``relaxed`` is ContextLP
    over all columns, OPTIMAL (its prices give the first bounds).

    The bounds only decide which subsets are solved and when to stop; every sum in them runs
    in a fixed order (elementwise numpy), so the choice is deterministic."""
    n = mu.shape[1]
    sets = np.array(list(itertools.combinations(range(n), k)), dtype=np.intp)
    bound = _lagrangian_bounds(sets, mu, cost, f, caps, budget, relaxed.share_price,
                               relaxed.budget_price)
    for i, row in enumerate(caps[sets].tolist()):
        if math.fsum(row) < 1.0 - 1e-12:  # these shares cannot carry the traffic: (3) fails
            bound[i] = -math.inf
    best: tuple[list[int], ContextPlanSolution] | None = None
    best_value = -math.inf
    # The first subset solved: the relaxation's k busiest models (ties to the lower index), a
    # good incumbent whose prices tighten the other bounds most; then best-first.
    traffic = traffic_average(f, relaxed.p)
    busiest = sorted(sorted(range(n), key=lambda m: (-traffic[m], m))[:k])
    i = int(np.flatnonzero(np.all(sets == np.array(busiest), axis=1))[0])
    while True:
        if not bound[i] > best_value + _TIE:
            i = int(bound.argmax())  # ties: the first subset in lexicographic order
            if not bound[i] > best_value + _TIE:
                break
        bound[i] = -math.inf
        cols = sets[i].tolist()
        solution = context_lp(mu[:, cols], cost[:, cols], f, caps[cols], budget)
        if solution.status == OPTIMAL and solution.objective > best_value:
            best, best_value = (cols, solution), solution.objective
        # Any prices >= 0 give valid bounds, whatever program they came from.
        price = np.zeros(n)
        price[cols] = solution.share_price
        np.minimum(bound, _lagrangian_bounds(sets, mu, cost, f, caps, budget, price,
                                             solution.budget_price), out=bound)
    return best


def _lagrangian_bounds(sets: NDArray[np.intp], mu: FloatArray, cost: FloatArray,
                       f: FloatArray, caps: FloatArray, budget: float, price: FloatArray,
                       budget_price: float) -> FloatArray:
    """``D(S; price, budget_price)`` of the module docstring for each row S of ``sets``."""
    gain = f[:, None] * (mu - price[None, :] - budget_price * cost)  # (contexts, models)
    best = gain[:, sets].max(axis=2)  # (contexts, subsets): each context on its best model
    total = np.full(sets.shape[0], budget_price * budget)
    for row in best:
        total += row
    share = caps * price
    for column in sets.T:
        total += share[column]
    return total


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
    # No cutting-plane rounds: at a gap of 0 SCIP spent most of its time separating cuts at the
    # root (1-4 nodes follow); branching closes these instances faster (41 contexts x 16
    # candidates: 0.3-2.7 s -> 0.08-0.14 s, the same optima; ``python -m bench.solvers``).
    solver.SetSolverSpecificParametersAsString(
        "separating/maxrounds = 0\nseparating/maxroundsroot = 0\n")
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

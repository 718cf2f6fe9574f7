"""ContextLP: how the traffic of every context is shared among the deployed models.

Program, over contexts ``x`` (frequency ``f_x``, summing to 1) and models ``m``::

    maximise    sum_x f_x sum_m p_xm mu_xm                          (1) expected reward
    subject to  sum_m p_xm = 1                        for every x   (2) every query is routed
                sum_x f_x p_xm <= alpha_m             for every m   (3) throughput shares
                sum_x f_x sum_m p_xm c_xm <= b                      (4) budget, over all traffic
                p >= 0

The budget and the shares hold over the whole traffic, not per context: a hard context may
spend more than ``b`` and use more than ``alpha_m`` of a model, paid for by easy ones.  With a
single context this is RouteOPT.

Method: the dual simplex method on a dense tableau, started from the reward-greedy assignment
(each context on its best model, ties to the cheaper, then the lower index).  That basis is
dual feasible (no context can gain by moving), so the dual simplex only repairs primal
infeasibility (overloaded shares, the budget): few pivots, most of them moving one context.
Leaving row: the most infeasible (most negative right-hand side); entering column: the dual
ratio test, ties to the lowest index.  After ``rows`` pivots without progress of the objective
it switches to the dual Bland rule (lowest-index infeasible basic variable leaves), which
cannot cycle, so the method terminates.  No leaving row with a negative entry means the
program is infeasible.  Costs are scaled by the budget so that every coefficient is about 1.

The pivots use elementwise numpy operations only (no BLAS reductions whose summation order
may differ between machines): the answer is a deterministic function of the inputs, which the
engine's replay relies on (the plan's floats are recorded in routing decisions).  GLOP would
need longer to build the model than this takes to solve it at a few hundred variables
(``python -m bench.solvers``); the unit tests check the optimum against GLOP.

Infeasible instances never raise, as in RouteOPT:

* ``sum(alpha) < 1``: every share is scaled by ``1 / sum(alpha)`` (status prefix ``caps_``);
* no plan meets the budget: the cheapest plan within the shares, i.e. (4)'s left-hand side
  minimised subject to (2)-(3) (``least``), and among the plans that spend at most
  ``least * (1 + 1e-12)`` the most rewarding (status ``budget_infeasible``).  The slack keeps
  the second solve feasible under rounding; where two models' costs differ by ``d``, it may
  buy ``least * 1e-12 / d`` of the dearer one.
* a budget of 0 (the engine never sets one) is met by the cheapest plan when it spends 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from solvers.route_opt import (
    BUDGET_INFEASIBLE,
    CAPS_BUDGET_INFEASIBLE,
    CAPS_INFEASIBLE,
    OPTIMAL,
)

FloatArray = NDArray[np.float64]

#: A right-hand side below -this is infeasible (scaled units).
_FEAS_TOL: Final = 1e-11
#: Entries of the leaving row above -this (relative to its largest) are not pivot candidates.
_PIVOT_TOL: Final = 1e-9
#: The budget-infeasible plan may spend this much (relative) above the least spend.
_LEAST_SLACK: Final = 1e-12
#: Reduced costs within this of each other tie in the ratio test (reward units).
_DUAL_TOL: Final = 1e-12


@dataclass(frozen=True, slots=True)
class ContextPlanSolution:
    """``p[x, m]``; ``objective`` (1); ``status`` as RouteOPT's; ``share_price[m]`` and
    ``budget_price`` the optimal dual prices of (3) and (4) (reward per share, per USD), 0 where
    the constraint is slack; ``pivots`` the dual simplex pivots taken."""

    p: FloatArray
    objective: float
    status: str
    share_price: FloatArray
    budget_price: float
    pivots: int


def context_lp(mu: ArrayLike, cost: ArrayLike, freq: ArrayLike, alpha: ArrayLike,
               budget: float) -> ContextPlanSolution:
    """Solve ContextLP; see the module docstring for the program, the method and the
    fallbacks.  ``mu`` and ``cost`` are ``(contexts, models)``."""
    mu_a, cost_a, f, caps = _validate(mu, cost, freq, alpha, budget)
    caps_ok = True
    total = math.fsum(caps.tolist())
    if total < 1.0 - 1e-12:
        caps_ok = False
        caps = caps / total if total > 0.0 else np.ones_like(caps)
    solved = _dual_simplex(mu_a, cost_a / budget, f, caps) if budget > 0.0 else None
    status = OPTIMAL if caps_ok else CAPS_INFEASIBLE
    price = 0.0
    if solved is None:
        # The least reachable spend: maximise -cost without the budget row (always feasible
        # once the shares can carry the traffic), then the most reward at that spend.
        norm = float(cost_a.max()) or 1.0
        cheapest = _dual_simplex(-cost_a / norm, None, f, caps)
        assert cheapest is not None, "the shares' transport problem is feasible once scaled"
        least = math.fsum((f[:, None] * cheapest[0] * cost_a).ravel().tolist())
        if least > 0.0:
            solved = _dual_simplex(mu_a, cost_a / (least * (1.0 + _LEAST_SLACK)), f, caps)
        if solved is None:  # a budget of 0 met only at spend 0, or rounding
            solved = cheapest
        if least > budget:
            status = BUDGET_INFEASIBLE if caps_ok else CAPS_BUDGET_INFEASIBLE
    else:
        price = solved[2] / budget
    p, share_price, _, pivots = solved
    return ContextPlanSolution(p, plan_value(f, p, mu_a), status, share_price, price, pivots)


def plan_value(f: FloatArray, p: FloatArray, mu: FloatArray) -> float:
    """(1) of plan ``p``: ``sum_x f_x sum_m p_xm mu_xm``, products elementwise and the sum
    ``math.fsum`` (no BLAS): the same float on every machine."""
    return math.fsum((f[:, None] * p * mu).ravel().tolist())


def traffic_average(f: FloatArray, values: FloatArray) -> list[float]:
    """``sum_x f_x values[x, m]`` per column ``m``, summed exactly as ``plan_value``: of a plan,
    each model's share of the traffic; of scores, their average over the traffic."""
    return [math.fsum((f * values[:, m]).tolist()) for m in range(values.shape[1])]


def _validate(mu: ArrayLike, cost: ArrayLike, freq: ArrayLike, alpha: ArrayLike, budget: float,
              ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    mu_a = np.array(mu, dtype=np.float64, ndmin=2)
    cost_a = np.array(cost, dtype=np.float64, ndmin=2)
    f = np.array(freq, dtype=np.float64)
    caps = np.array(alpha, dtype=np.float64)
    if mu_a.ndim != 2 or mu_a.shape != cost_a.shape or mu_a.size == 0:
        raise ValueError(f"mu, cost: expected equal non-empty (contexts, models) arrays, got "
                         f"{mu_a.shape} and {cost_a.shape}")
    if f.shape != (mu_a.shape[0],) or caps.shape != (mu_a.shape[1],):
        raise ValueError(f"freq, alpha: expected lengths {mu_a.shape[0]} and {mu_a.shape[1]}, "
                         f"got {f.shape} and {caps.shape}")
    for name, arr in (("mu", mu_a), ("cost", cost_a), ("freq", f), ("alpha", caps)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: contains NaN or infinity")
        if np.any(arr < 0.0):
            raise ValueError(f"{name}: must be >= 0")
    if not math.isfinite(budget) or budget < 0.0:
        raise ValueError(f"budget: must be finite and >= 0, got {budget!r}")
    if abs(math.fsum(f.tolist()) - 1.0) > 1e-9:
        raise ValueError("freq: must sum to 1")
    return mu_a, cost_a, f, caps


def _dual_simplex(obj: FloatArray, cost: FloatArray | None, f: FloatArray, caps: FloatArray,
                  ) -> tuple[FloatArray, FloatArray, float, int] | None:
    """``(p, share duals, budget dual, pivots)`` of max sum f p obj s.t. (2), (3) and, when
    ``cost`` is given (in units of the budget), (4) with right-hand side 1; None if
    infeasible."""
    n_ctx, n_mod = obj.shape
    n = n_ctx * n_mod
    slack_rows = n_mod + (cost is not None)
    rows = n_ctx + slack_rows
    tab = np.zeros((rows + 1, n + slack_rows + 1))
    ctx_of = np.repeat(np.arange(n_ctx), n_mod)
    mod_of = np.tile(np.arange(n_mod), n_ctx)
    tab[ctx_of, np.arange(n)] = 1.0
    tab[:n_ctx, -1] = 1.0
    tab[n_ctx + mod_of, np.arange(n)] = f[ctx_of]
    tab[n_ctx:n_ctx + n_mod, -1] = caps
    weighted = (f[:, None] * obj).ravel()
    if cost is not None:
        tab[rows - 1, :n] = (f[:, None] * cost).ravel()
        tab[rows - 1, -1] = 1.0
    tab[n_ctx + np.arange(slack_rows), n + np.arange(slack_rows)] = 1.0
    tab[rows, :n] = -weighted

    # The reward-greedy basis: context x on its best model g_x (ties cheaper, then lower index).
    tie_cost = cost if cost is not None else np.zeros_like(obj)
    index = np.broadcast_to(np.arange(n_mod), obj.shape)
    greedy = np.lexsort((index, tie_cost, -obj), axis=-1)[:, 0]
    basic = np.arange(n_ctx) * n_mod + greedy
    basis = [*basic.tolist(), *range(n, n + slack_rows)]
    # Eliminate the basic columns from the share, budget and objective rows: row x holds a 1
    # in each of context x's columns and 1 on the right, so subtracting w_x * row x is adding
    # w_x to the block of context x (and to the right-hand side).
    for target, weights in _eliminations(n_ctx, n_mod, greedy, f, cost, weighted, rows):
        tab[target, :n] -= np.repeat(weights, n_mod)
        tab[target, -1] -= math.fsum(weights.tolist())

    pivots = 0
    stalled = 0
    limit = rows
    z = tab[rows]
    rhs = tab[:rows, -1]  # views: the pivots update the tableau in place
    while True:
        if stalled < limit:
            r = int(rhs.argmin())
            if rhs[r] >= -_FEAS_TOL:
                break
        else:  # dual Bland: the infeasible row whose basic variable has the lowest index
            infeasible = np.flatnonzero(rhs < -_FEAS_TOL)
            if infeasible.size == 0:
                break
            r = int(min(infeasible.tolist(), key=basis.__getitem__))
        row = tab[r, :-1]
        candidates = np.flatnonzero(row < -_PIVOT_TOL * max(1.0, -float(row.min())))
        if candidates.size == 0:
            return None
        entries = -row[candidates]
        reduced = np.maximum(z[candidates], 0.0)
        ratios = reduced / entries
        if stalled < limit:
            # Harris: of the columns whose ratio is within the dual tolerance of the least,
            # the largest entry.  A tiny pivot multiplies every rounding error by its inverse.
            reduced += _DUAL_TOL
            reduced /= entries
            near = np.flatnonzero(ratios <= reduced.min())
            j = int(candidates[near[int(entries[near].argmax())]])
        else:  # argmin: the first, i.e. lowest index (Bland)
            j = int(candidates[int(ratios.argmin())])
        before = float(z[-1])
        _pivot(tab, r, j)
        basis[r] = j
        pivots += 1
        stalled = stalled + 1 if z[-1] >= before else 0

    p = np.zeros(n)
    for i, k in enumerate(basis):
        if k < n:
            p[k] = max(tab[i, -1], 0.0)
    p = p.reshape(n_ctx, n_mod)
    share_price = np.maximum(z[n:n + n_mod], 0.0)
    budget_price = max(float(z[n + n_mod]), 0.0) if cost is not None else 0.0
    return p, share_price, budget_price, pivots


def _eliminations(n_ctx: int, n_mod: int, greedy: NDArray[np.intp], f: FloatArray,
                  cost: FloatArray | None, weighted: FloatArray, rows: int,
                  ) -> list[tuple[int, FloatArray]]:
    """(row, per-context weights) to subtract for the greedy basis; see ``_dual_simplex``."""
    out = []
    for m in range(n_mod):
        on_m = np.where(greedy == m, f, 0.0)
        if on_m.any():
            out.append((n_ctx + m, on_m))
    idx = np.arange(n_ctx)
    if cost is not None:
        out.append((rows - 1, f * cost[idx, greedy]))
    out.append((rows, -weighted.reshape(n_ctx, n_mod)[idx, greedy]))
    return out


def _pivot(tab: FloatArray, r: int, j: int) -> None:
    pivot_row = tab[r] / tab[r, j]
    column = tab[:, j].copy()
    column[r] = 0.0
    touched = np.flatnonzero(column)
    # The rows without an entry in column j are unchanged (not x - 0 * y: the same up to the
    # sign of zeros); the product is formed by broadcasting, as np.multiply.outer does.
    tab[touched] -= column[touched, None] * pivot_row
    tab[r] = pivot_row
    tab[touched, j] = 0.0  # exactly 0, not a rounding residue

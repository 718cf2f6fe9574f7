"""RouteOPT solved by a general LP solver (OR-Tools GLOP): the test oracle and benchmark baseline.

Same program, same fallbacks and statuses as :func:`solvers.route_opt.route_opt`, derived
independently:

* caps infeasible (``sum alpha < 1``): caps scaled by ``1 / sum alpha``;
* budget infeasible: a first LP finds the least reachable cost ``c*``; a second maximises reward
  subject to cost ``<= c*`` (lexicographic: least overrun, then most reward).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from ortools.linear_solver import pywraplp

from solvers.route_opt import (
    BUDGET_INFEASIBLE,
    CAPS_BUDGET_INFEASIBLE,
    CAPS_INFEASIBLE,
    OPTIMAL,
    RouteSolution,
    validate_instance,
)


def _glop() -> pywraplp.Solver:
    """GLOP with feasibility tolerances of 1e-12 instead of its default 1e-8: with the default
    it stops at a vertex whose reduced costs are within 1e-8 of optimal, so on rewards like
    1 and 0.9999999 it returned a plan 1.3e-8 below the optimum the solver under test found."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    if not solver.SetSolverSpecificParametersAsString(
            "primal_feasibility_tolerance: 1e-12 dual_feasibility_tolerance: 1e-12"):
        raise RuntimeError("GLOP rejected its tolerances")
    return solver


def route_opt_reference(
    mu_u: ArrayLike, c_l: ArrayLike, alpha: ArrayLike, budget: float
) -> RouteSolution:
    """Solve RouteOPT with GLOP; raises ``RuntimeError`` if GLOP fails on a feasible program."""
    mu, cost, caps, b = validate_instance(mu_u, c_l, alpha, budget)
    total_cap = math.fsum(caps)
    caps_ok = total_cap >= 1.0 - 1e-12
    if not caps_ok:
        caps = [a / total_cap for a in caps] if total_cap > 0 else [1.0] * len(caps)

    least_cost, _ = _solve(caps, objective=[-c for c in cost], budget=None)
    least = -least_cost
    if least > b * (1.0 + 1e-9):
        _, p = _solve(caps, objective=mu, budget=(cost, least * (1.0 + 1e-12)))
        status = BUDGET_INFEASIBLE if caps_ok else CAPS_BUDGET_INFEASIBLE
    else:
        _, p = _solve(caps, objective=mu, budget=(cost, b))
        status = OPTIMAL if caps_ok else CAPS_INFEASIBLE
    p_arr = np.array(p)
    return RouteSolution(p_arr, float(np.dot(p_arr, mu)), status)


def _solve(
    caps: list[float],
    objective: list[float],
    budget: tuple[list[float], float] | None,
) -> tuple[float, list[float]]:
    """max objective . p  s.t. sum p = 1, 0 <= p <= caps, optionally cost . p <= limit."""
    solver = _glop()
    p = [solver.NumVar(0.0, cap, f"p{i}") for i, cap in enumerate(caps)]
    solver.Add(solver.Sum(p) == 1.0)
    if budget is not None:
        cost, limit = budget
        solver.Add(solver.Sum([c * v for c, v in zip(cost, p)]) <= limit)
    solver.Maximize(solver.Sum([w * v for w, v in zip(objective, p)]))
    status = solver.Solve()
    if status != pywraplp.Solver.OPTIMAL:
        raise RuntimeError(f"GLOP returned status {status} on a feasible RouteOPT program")
    return solver.Objective().Value(), [v.solution_value() for v in p]


def context_lp_reference(mu: ArrayLike, cost: ArrayLike, freq: ArrayLike, alpha: ArrayLike,
                         budget: float) -> tuple[float, str]:
    """ContextLP (``solvers.context_lp``) by GLOP: ``(objective, status)``, the same
    fallbacks (caps scaled when they sum below 1; the least reachable spend when no plan meets
    the budget, whose objective is then that of the cheapest plan found by GLOP)."""
    mu_a, cost_a = np.array(mu, dtype=float, ndmin=2), np.array(cost, dtype=float, ndmin=2)
    f, caps = np.array(freq, dtype=float), np.array(alpha, dtype=float)
    total = math.fsum(caps.tolist())
    caps_ok = total >= 1.0 - 1e-12
    if not caps_ok:
        caps = caps / total
    spend = f[:, None] * cost_a
    least, _ = _solve_context(-spend, caps, f, None)
    if -least > budget * (1.0 + 1e-9):
        return _solve_context(f[:, None] * mu_a, caps, f, (spend, -least * (1 + 1e-12)))[0], (
            BUDGET_INFEASIBLE if caps_ok else CAPS_BUDGET_INFEASIBLE)
    value, _ = _solve_context(f[:, None] * mu_a, caps, f, (spend, budget))
    return value, OPTIMAL if caps_ok else CAPS_INFEASIBLE


def _solve_context(objective: np.ndarray, caps: np.ndarray, f: np.ndarray,
                   budget: tuple[np.ndarray, float] | None) -> tuple[float, np.ndarray]:
    solver = _glop()
    n_ctx, n_mod = objective.shape
    p = [[solver.NumVar(0.0, 1.0, "") for _ in range(n_mod)] for _ in range(n_ctx)]
    for row in p:
        solver.Add(solver.Sum(row) == 1.0)
    for m in range(n_mod):
        solver.Add(solver.Sum([float(f[x]) * p[x][m] for x in range(n_ctx)]) <= float(caps[m]))
    if budget is not None:
        spend, limit = budget
        solver.Add(solver.Sum([float(spend[x, m]) * p[x][m] for x in range(n_ctx)
                               for m in range(n_mod)]) <= limit)
    solver.Maximize(solver.Sum([float(objective[x, m]) * p[x][m] for x in range(n_ctx)
                                for m in range(n_mod)]))
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        raise RuntimeError("GLOP failed on a feasible ContextLP program")
    return solver.Objective().Value(), np.array([[v.solution_value() for v in row] for row in p])

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
    solver = pywraplp.Solver.CreateSolver("GLOP")
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

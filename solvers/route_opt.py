"""RouteOPT: the per-query routing distribution over the deployed models.

Program (StageRoute Eq. 7), over the M deployed models::

    maximise    sum_m p_m * mu_m                                (1) optimistic reward
    subject to  sum_m p_m = 1                                   (2) every query is routed
                sum_m p_m * c_m <= b                            (3) per-query cost budget
                0 <= p_m <= alpha_m                             (4) throughput shares

Exact special-purpose algorithm (no LP solver): a parametric walk along the budget.

1. Start from the reward-greedy vertex: models by ``mu`` descending (ties cheaper first), each
   filled to its cap until the mass reaches 1.  It maximises the Lagrangian
   ``sum p (mu - lam c)`` for ``lam = 0``; if it meets the budget it is optimal.
2. Otherwise move mass from a used model ``i`` to a cheaper model ``j`` with room, choosing the
   pair with the least reward lost per unit of cost saved, ``rate = (mu_i - mu_j) / (c_i - c_j)``,
   until ``i`` is empty, ``j`` is full or the budget binds.  Repeat.

Each point of the walk maximises the Lagrangian for ``lam`` = the current rate (an exchange at
the least rate keeps it optimal; rates only grow along the walk), so the first point where the
budget binds is optimal by complementary slackness.  The walk is the parametric simplex method:
each pivot is one swap of two models in the order ``mu - lam c``, at most ``M (M - 1) / 2`` in
all, each ``O(M^2)``.  On random instances the median is one pivot and the most seen is seven
(``python -m bench.solvers``), so a solve costs microseconds, well below building an LP.
Ending where the budget binds leaves at most two models strictly between 0 and their caps
except when several models tie at the final rate.

Infeasible instances never raise (this runs once per query):

* ``sum(alpha) < 1`` (status ``caps_infeasible``): every cap is scaled by the least common factor
  ``1 / sum(alpha)`` that lets the mass reach 1, then the program is solved with those caps.
* no mix meets the budget (status ``budget_infeasible``): the cheapest mix is returned (cheapest
  models first, ties to the higher reward), i.e. the least budget overrun.
* both at once: ``caps_budget_infeasible``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

OPTIMAL: Final = "optimal"
CAPS_INFEASIBLE: Final = "caps_infeasible"
BUDGET_INFEASIBLE: Final = "budget_infeasible"
CAPS_BUDGET_INFEASIBLE: Final = "caps_budget_infeasible"

# Relative tolerance for "meets the budget" and "caps reach 1": float sums of exact
# vertices (e.g. ten caps of 0.1) land a few ulps off.
_REL_TOL: Final = 1e-12


@dataclass(frozen=True, slots=True)
class RouteSolution:
    """``p`` in input order; ``objective = sum p * mu``; ``status`` one of the module constants."""

    p: NDArray[np.float64]
    objective: float
    status: str


def as_float_list(name: str, values: ArrayLike) -> list[float]:
    """Validated finite floats; raises ``ValueError`` naming the argument."""
    items: Iterable[Any] = values.tolist() if isinstance(values, np.ndarray) else values  # type: ignore[assignment]
    try:
        out = [float(x) for x in items]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers ({exc})") from None
    if not out:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence")
    if not all(map(math.isfinite, out)):
        raise ValueError(f"{name}: contains NaN or infinity")
    return out


def validate_instance(
    mu_u: ArrayLike, c_l: ArrayLike, alpha: ArrayLike, budget: float
) -> tuple[list[float], list[float], list[float], float]:
    """Checks shared by RouteOPT, its reference and DeployOPT."""
    mu = as_float_list("mu_u", mu_u)
    cost = as_float_list("c_l", c_l)
    caps = as_float_list("alpha", alpha)
    if not len(mu) == len(cost) == len(caps):
        raise ValueError(
            f"mu_u, c_l, alpha: lengths differ ({len(mu)}, {len(cost)}, {len(caps)})"
        )
    if min(caps) < 0.0:
        raise ValueError("alpha: throughput shares must be >= 0")
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.floating)):
        raise ValueError(f"budget: expected a number, got {type(budget).__name__}")
    b = float(budget)
    if not math.isfinite(b) or b < 0.0:
        raise ValueError(f"budget: must be finite and >= 0, got {budget!r}")
    return mu, cost, caps, b


def route_opt(mu_u: ArrayLike, c_l: ArrayLike, alpha: ArrayLike, budget: float) -> RouteSolution:
    """Solve RouteOPT exactly; see the module docstring for the program and the fallbacks."""
    mu, cost, caps, b = validate_instance(mu_u, c_l, alpha, budget)
    p, status = solve_lists(mu, cost, caps, b)
    return RouteSolution(np.array(p), math.fsum([pi * ui for pi, ui in zip(p, mu)]), status)


def solve_lists(
    mu: Sequence[float], cost: Sequence[float], caps: Sequence[float], b: float
) -> tuple[list[float], str]:
    """RouteOPT on validated plain lists: ``(p, status)``.  The engine's hot path calls this."""
    n = len(mu)
    caps_ok = True
    total_cap = math.fsum(caps)
    if total_cap < 1.0 - _REL_TOL:
        caps_ok = False
        caps = [a / total_cap for a in caps] if total_cap > 0.0 else [1.0] * n
    limit = budget_limit(b, cost)
    ok, infeasible = (OPTIMAL, BUDGET_INFEASIBLE) if caps_ok else (
        CAPS_INFEASIBLE, CAPS_BUDGET_INFEASIBLE)

    # Best reward first, ties to the cheaper, then the lower index (tuples sort without a
    # key function: this is the engine's hot path).
    p, spent = _fill([i for _, _, i in sorted(zip([-u for u in mu], cost, range(n)))], caps, cost)
    while spent > limit:
        _, i, j = _least_rate_exchange(p, mu, cost, caps)
        if i < 0:  # no exchange saves cost: no mix meets the budget
            cheapest, _ = _fill(sorted(range(n), key=lambda k: (cost[k], -mu[k], k)), caps, cost)
            return cheapest, infeasible
        saving = cost[i] - cost[j]
        room = caps[j] - p[j]
        step = min(p[i], room, (spent - b) / saving)
        # Land exactly on the bound that stops the step, so no ulp-sized remainders linger.
        p[i] = 0.0 if step == p[i] else p[i] - step
        p[j] = caps[j] if step == room else p[j] + step
        spent -= step * saving
    return p, ok


def budget_limit(b: float, cost: Sequence[float]) -> float:
    """The largest spend that meets budget ``b`` (rounding: sums of exact vertices land a
    few ulps off). Whoever decides whether a mix fits the budget uses this, so that the
    engine and RouteOPT never disagree about a mix that costs ``b`` up to rounding."""
    return b + _REL_TOL * max(b, max(cost), -min(cost))


def cheapest_mix_cost(cost: Sequence[float], caps: Sequence[float],
                      order: Sequence[int] | None = None) -> float:
    """The least ``sum p c`` over ``sum p = 1, 0 <= p <= caps``: cheapest models filled first,
    caps scaled by ``1 / sum(caps)`` when they sum below 1 (as ``solve_lists`` does).
    ``order``: the indices by cost, if the caller already has them."""
    total_cap = math.fsum(caps)
    if total_cap < 1.0 - _REL_TOL:
        caps = [a / total_cap for a in caps] if total_cap > 0.0 else [1.0] * len(caps)
    if order is None:
        order = sorted(range(len(cost)), key=cost.__getitem__)
    return _fill(order, caps, cost)[1]


def _least_rate_exchange(
    p: Sequence[float], mu: Sequence[float], cost: Sequence[float], caps: Sequence[float]
) -> tuple[float, int, int]:
    """``(rate, i, j)`` of the used model ``i`` and cheaper model ``j`` with room that lose the
    least reward per unit of cost moved from ``i`` to ``j``; ``i = -1`` if there is none."""
    best, best_i, best_j = math.inf, -1, -1
    receivers = [j for j, (pj, aj) in enumerate(zip(p, caps)) if pj < aj]
    for i, pi in enumerate(p):
        if pi > 0.0:
            mu_i, c_i = mu[i], cost[i]
            for j in receivers:
                saving = c_i - cost[j]
                if saving > 0.0:
                    rate = (mu_i - mu[j]) / saving
                    if rate < best:
                        best, best_i, best_j = rate, i, j
    return best, best_i, best_j


def _fill(order: Sequence[int], caps: Sequence[float], cost: Sequence[float],
          ) -> tuple[list[float], float]:
    """Greedy fractional knapsack: fill models in ``order`` to their caps until mass 1.

    Returns the fill and its cost.
    """
    p = [0.0] * len(caps)
    remaining = 1.0
    spent = 0.0
    for i in order:
        take = caps[i] if caps[i] < remaining else remaining
        p[i] = take
        spent += take * cost[i]
        remaining -= take
        if remaining <= 0.0:
            break
    return p, spent

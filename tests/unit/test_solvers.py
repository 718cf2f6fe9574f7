"""Solver invariants: bounds, RouteOPT against GLOP, DeployOPT against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from bench.reference import route_opt_reference
from solvers import (
    BUDGET_INFEASIBLE,
    CAPS_BUDGET_INFEASIBLE,
    CAPS_INFEASIBLE,
    OPTIMAL,
    confidence_radius,
    cost_lcb,
    deploy_opt,
    model_bounds,
    reward_ucb,
    route_opt,
)

# Values on a coarse grid make ties, equal costs and budgets exactly at a vertex common.
coarse = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 0.75, 0.9, 1.0])
# GLOP, the reference, cannot scale magnitudes like 1e-93: keep values in a realistic range.
fine = st.one_of(st.just(0.0), st.floats(1e-4, 1.0))
unit = st.one_of(coarse, fine)
share = st.one_of(st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.5, 1.0]), st.floats(0.01, 1.0))


Instance = tuple[list[float], list[float], list[float], float]


@st.composite
def instances(draw: st.DrawFn, max_m: int = 12) -> Instance:
    m = draw(st.integers(1, max_m))
    mu = draw(st.lists(unit, min_size=m, max_size=m))
    cost = draw(st.lists(unit, min_size=m, max_size=m))
    alpha = draw(st.one_of(
        st.lists(share, min_size=m, max_size=m),
        st.just([1.0 / m] * m),                  # caps summing to exactly 1
        st.just([0.9 / m] * m),                  # all below 1/M: caps infeasible
    ))
    budget = draw(st.one_of(
        st.floats(1e-3, 1.0),
        st.sampled_from(sorted(set(cost) - {0.0}) or [0.5]),  # at a vertex
        st.just(max(min(cost) / 2, 1e-3)),                     # below the cheapest model
    ))
    return mu, cost, alpha, budget


def assert_feasible(p: np.ndarray, cost: list[float], alpha: list[float], budget: float,
                    status: str) -> None:
    assert abs(p.sum() - 1.0) <= 1e-12
    assert np.all(p >= 0.0)
    if status in (OPTIMAL, BUDGET_INFEASIBLE):
        assert np.all(p <= np.array(alpha) + 1e-12)
    if status in (OPTIMAL, CAPS_INFEASIBLE):
        assert float(np.dot(p, cost)) <= budget + 1e-9


# --- bounds -----------------------------------------------------------------------------------


def test_radius_formula_and_unexplored() -> None:
    r = confidence_radius([0.25, 0.0, 0.3], [4, 10, 0], gamma=2.0)
    # sqrt(2 * 0.25 / 4) + 2 / 4 = sqrt(0.125) + 0.5
    assert r[0] == pytest.approx(math.sqrt(0.125) + 0.5)
    assert r[1] == pytest.approx(0.2)
    assert math.isinf(r[2])
    assert reward_ucb([0.3], [math.inf])[0] == 1.0
    assert cost_lcb([0.3], [math.inf], 0.05, 0.9)[0] == 0.05


@given(st.integers(0, 10_000), fine, st.floats(0, 0.25), fine, st.floats(0, 0.25),
       st.floats(0.01, 10.0))
def test_scalar_bounds_equal_vectorised(n: int, mr: float, vr: float, mc: float, vc: float,
                                        gamma: float) -> None:
    mu_u, c_l = model_bounds(n, mr, vr, mc, vc, gamma, 0.01, 0.9)
    assert mu_u == reward_ucb([mr], confidence_radius([vr], [n], gamma))[0]
    assert c_l == cost_lcb([mc], confidence_radius([vc], [n], gamma), 0.01, 0.9)[0]
    assert 0.0 <= mu_u <= 1.0 and 0.01 <= c_l <= 0.9
    # Optimism: the bounds never sit on the wrong side of the mean (inside the clip range).
    assert mu_u >= min(mr, 1.0) and c_l <= max(mc, 0.01)


@given(fine, st.floats(0, 0.25), st.integers(1, 1000), st.floats(0.1, 5.0))
def test_bounds_tighten_with_samples(mean: float, var: float, n: int, gamma: float) -> None:
    r = confidence_radius([var, var], [n, n + 1], gamma)
    assert r[1] < r[0]


# --- RouteOPT ---------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(instances())
# Costs a ulp apart, budget below every mix: the reference takes the dearer, better model.
@example(([0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9999999999999999, 1.0, 0.0, 0.0],
          [0.05, 0.05, 0.05, 0.05, 1.0, 0.05, 0.05], 0.001))
def test_route_opt_matches_glop(inst: tuple[list[float], list[float], list[float], float]) -> None:
    mu, cost, alpha, budget = inst
    exact = route_opt(mu, cost, alpha, budget)
    ref = route_opt_reference(mu, cost, alpha, budget)
    assert exact.status == ref.status
    assert_feasible(exact.p, cost, alpha, budget, exact.status)
    if exact.status in (OPTIMAL, CAPS_INFEASIBLE):
        assert exact.objective == pytest.approx(ref.objective, abs=1e-9)
        return
    # No mix meets the budget: RouteOPT returns the cheapest mix, ties to the higher reward.
    # The reference maximises reward within 1e-12 of the least spend (GLOP needs the slack), so
    # where two distinct costs are nearly equal (1 and 0.9999999999999999; here: within 1e-9)
    # it may take the dearer, more rewarding model; then it only bounds RouteOPT's reward.
    spend = float(np.dot(exact.p, cost))
    assert spend <= float(np.dot(ref.p, cost)) + 1e-9
    distinct = sorted(set(cost))
    near_tie = any(b - a <= 1e-9 * max(abs(b), 1.0) for a, b in itertools.pairwise(distinct))
    if near_tie:
        assert exact.objective <= ref.objective + 1e-6
    else:
        # GLOP's own tolerances bound how close the fallback optima can be compared.
        assert exact.objective == pytest.approx(ref.objective, abs=1e-6)


def test_route_opt_hand_solved() -> None:
    # mu = (0.9, 0.5), c = (1.0, 0.2), b = 0.6, caps 1: budget binds, p1 * 1.0 + (1 - p1) * 0.2
    # = 0.6 -> p1 = 0.5; objective 0.5 * 0.9 + 0.5 * 0.5 = 0.7.
    sol = route_opt([0.9, 0.5], [1.0, 0.2], [1.0, 1.0], 0.6)
    assert sol.status == OPTIMAL
    np.testing.assert_allclose(sol.p, [0.5, 0.5], atol=1e-15)
    assert sol.objective == pytest.approx(0.7, abs=1e-15)
    # Caps bind: the best model takes its 0.4 share, the next best the rest: 0.4 + 0.6 * 0.8.
    sol = route_opt([1.0, 0.8, 0.1], [0.1, 0.1, 0.1], [0.4, 0.6, 1.0], 1.0)
    np.testing.assert_allclose(sol.p, [0.4, 0.6, 0.0])
    assert sol.objective == pytest.approx(0.88)


def test_route_opt_fallbacks_are_flagged_not_raised() -> None:
    below = route_opt([0.9, 0.5], [1.0, 0.4], [1.0, 1.0], 0.1)
    assert below.status == BUDGET_INFEASIBLE
    np.testing.assert_array_equal(below.p, [0.0, 1.0])  # the cheapest mix
    caps = route_opt([0.9, 0.5], [0.1, 0.1], [0.25, 0.25], 1.0)
    assert caps.status == CAPS_INFEASIBLE
    np.testing.assert_allclose(caps.p, [0.5, 0.5])  # caps scaled by 1 / 0.5
    both = route_opt([0.9, 0.5], [1.0, 0.4], [0.25, 0.25], 0.1)
    assert both.status == CAPS_BUDGET_INFEASIBLE
    assert both.p.sum() == pytest.approx(1.0)


def test_single_model() -> None:
    assert route_opt([0.3], [0.2], [1.0], 0.5).p.tolist() == [1.0]
    assert route_opt([0.3], [0.2], [1.0], 0.1).status == BUDGET_INFEASIBLE


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"mu_u": [0.5, math.nan]}, "mu_u"),
        ({"c_l": [0.5, math.inf]}, "c_l"),
        ({"alpha": [0.5, -0.1]}, "alpha"),
        ({"budget": -1e-9}, "budget"),
        ({"budget": math.nan}, "budget"),
        ({"c_l": [0.5]}, "lengths differ"),
        ({"mu_u": []}, "mu_u"),
    ],
)
def test_invalid_input_names_the_argument(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"mu_u": [0.5, 0.4], "c_l": [0.5, 0.2], "alpha": [1.0, 1.0],
                               "budget": 0.3}
    args.update(kwargs)
    for solve in (route_opt, route_opt_reference):
        with pytest.raises(ValueError, match=name):
            solve(**args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        deploy_opt(**args, m_max=1)  # type: ignore[arg-type]


def test_deploy_opt_rejects_bad_m_max() -> None:
    with pytest.raises(ValueError, match="m_max"):
        deploy_opt([0.5], [0.5], [1.0], 0.5, 0)


# --- DeployOPT --------------------------------------------------------------------------------


def brute_force(mu: list[float], cost: list[float], alpha: list[float], budget: float,
                k: int) -> float | None:
    """Best RouteOPT objective over all supports of size k (None if none is feasible)."""
    best = None
    for subset in itertools.combinations(range(len(mu)), k):
        sel = list(subset)
        sol = route_opt([mu[i] for i in sel], [cost[i] for i in sel],
                        [alpha[i] for i in sel], budget)
        if sol.status == OPTIMAL and (best is None or sol.objective > best):
            best = sol.objective
    return best


@settings(max_examples=250, deadline=None)
@given(instances(max_m=10), st.integers(1, 10))
# SCIP's support {0} meets cap 1 - 1e-7 only within its tolerance.
@example(([0.0] * 5, [0.1, 0.0, 0.1, 0.0, 0.0], [0.9999999] + [0.05] * 4, 1.0), 3)
@example(([0.0] * 9, [0.0] * 6 + [0.1, 0.0, 0.0], [0.05] * 5 + [0.1, 1.0, 0.9999999, 0.05],
          0.0625), 1)
def test_deploy_opt_matches_brute_force(
    inst: tuple[list[float], list[float], list[float], float], m_max: int,
) -> None:
    mu, cost, alpha, budget = inst
    k = min(m_max, len(mu))
    assume(sum(sorted(alpha, reverse=True)[:k]) >= 1.0)
    sol = deploy_opt(mu, cost, alpha, budget, m_max)
    assert len(sol.selected) == k
    assert list(sol.selected) == sorted(set(sol.selected))
    assert set(np.flatnonzero(sol.d > 0)) <= set(sol.selected)
    best = brute_force(mu, cost, alpha, budget, k)
    if best is None:
        assert sol.status == BUDGET_INFEASIBLE
    else:
        assert sol.status == OPTIMAL
        assert sol.objective == pytest.approx(best, abs=1e-9)
        assert_feasible(sol.d, cost, alpha, budget, sol.status)


def test_deploy_opt_needs_the_mip() -> None:
    # The LP relaxation fills models 0-3 to their 0.25 caps (support 4 > m_max = 3).  A 3-model
    # support reaches mass 1 only with model 4 (cap 0.5) and two 0.25 models; the best is
    # {0, 1, 4}: 0.25 * 0.9 + 0.25 * 0.8 + 0.5 * 0.5 = 0.675 (budget loose).
    mu = [0.9, 0.8, 0.7, 0.6, 0.5]
    alpha = [0.25, 0.25, 0.25, 0.25, 0.5]
    sol = deploy_opt(mu, [0.1] * 5, alpha, 1.0, 3)
    assert sol.selected == (0, 1, 4)
    assert sol.objective == pytest.approx(0.675)
    assert brute_force(mu, [0.1] * 5, alpha, 1.0, 3) == pytest.approx(0.675)


def test_free_slots_are_filled_most_optimistic_first() -> None:
    # One model carries everything (cap 1, best reward); the other slots go to the highest mu,
    # ties to the lower cost, then the lower index.
    mu = [1.0, 0.2, 0.7, 0.7, 0.7, 0.9]
    cost = [0.1, 0.0, 0.5, 0.3, 0.3, 0.9]
    sol = deploy_opt(mu, cost, [1.0] * 6, 1.0, 4)
    assert sol.d.tolist() == [1.0, 0, 0, 0, 0, 0]
    assert sol.selected == (0, 3, 4, 5)


def test_deploy_opt_budget_infeasible_deploys_the_cheapest() -> None:
    sol = deploy_opt([0.9, 0.8, 0.1, 0.2], [0.9, 0.8, 0.5, 0.5], [1.0] * 4, 0.1, 2)
    assert sol.status == BUDGET_INFEASIBLE
    assert sol.selected == (2, 3)
    assert sol.d.sum() == pytest.approx(1.0)


def test_deploy_opt_caps_infeasible_scales_shares() -> None:
    sol = deploy_opt([0.9, 0.8, 0.7], [0.1] * 3, [0.3, 0.3, 0.3], 1.0, 2)
    assert sol.status == CAPS_INFEASIBLE
    assert sol.selected == (0, 1)
    np.testing.assert_allclose(sol.d, [0.5, 0.5, 0.0])


def test_deploy_opt_pruning_is_exact_on_large_instances() -> None:
    rng = np.random.default_rng(7)
    mu, cost = rng.random(60), rng.random(60)
    alpha = rng.uniform(0.1, 0.3, 60)
    sol = deploy_opt(mu, cost, alpha, 0.3, 4)
    # Compare with the MIP solved over every candidate (no pruning, no LP shortcut).
    from solvers.deploy_opt import _mip_support, _polish

    full = _mip_support(mu.tolist(), cost.tolist(), alpha.tolist(), 0.3, 4)
    assert full is not None
    _, weights, _ = _polish(full, mu.tolist(), cost.tolist(), alpha.tolist(), 0.3)
    assert sol.objective == pytest.approx(sum(w * mu[i] for i, w in zip(full, weights)), abs=1e-7)

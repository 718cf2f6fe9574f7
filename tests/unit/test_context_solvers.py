"""ContextLP against GLOP and hand-solved plans; ContextDeployOPT against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.reference import context_lp_reference
from solvers import (
    BUDGET_INFEASIBLE,
    CAPS_BUDGET_INFEASIBLE,
    CAPS_INFEASIBLE,
    OPTIMAL,
    context_deploy_opt,
    context_lp,
    deploy_opt,
    route_opt,
)

coarse = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0])  # ties and degenerate vertices
unit = st.one_of(coarse, st.floats(1e-3, 1.0))

Instance = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]


@st.composite
def instances(draw: st.DrawFn, max_x: int = 6, max_m: int = 6) -> Instance:
    n_ctx, n_mod = draw(st.integers(1, max_x)), draw(st.integers(1, max_m))
    mu = np.array(draw(st.lists(unit, min_size=n_ctx * n_mod, max_size=n_ctx * n_mod)))
    cost = np.array(draw(st.lists(unit, min_size=n_ctx * n_mod, max_size=n_ctx * n_mod)))
    weights = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=n_ctx, max_size=n_ctx)))
    alpha = np.array(draw(st.one_of(
        st.lists(st.sampled_from([0.1, 0.25, 0.5, 1.0]), min_size=n_mod, max_size=n_mod),
        st.just([0.9 / n_mod] * n_mod))))  # below 1/M each: the shares cannot carry the traffic
    budget = draw(st.floats(1e-3, 1.0))
    return (mu.reshape(n_ctx, n_mod), cost.reshape(n_ctx, n_mod), weights / weights.sum(),
            alpha, budget)


def assert_plan_feasible(p: np.ndarray, cost: np.ndarray, f: np.ndarray, alpha: np.ndarray,
                         budget: float, status: str) -> None:
    assert np.all(p >= 0.0)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-12)
    caps = alpha if alpha.sum() >= 1.0 - 1e-12 else alpha / alpha.sum()
    assert np.all(f @ p <= caps + 1e-9)
    if status in (OPTIMAL, CAPS_INFEASIBLE):
        assert float(np.sum(f[:, None] * p * cost)) <= budget * (1.0 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(instances())
def test_context_lp_is_optimal_and_feasible(instance: Instance) -> None:
    check_context_lp(instance)


def _cells(shape: tuple[int, int], cells: list[tuple[int, int, float]]) -> np.ndarray:
    out = np.zeros(shape)
    for i, j, value in cells:
        out[i, j] = value
    return out


# Found by the property above. The first three: costs 1 and 0.9999999 with all-zero (or tied)
# rewards made the dual ratio test pivot on entries of 3e-6 and then 9e-10, and the tableau blew up.
NEAR_DEGENERATE = [
    (_cells((6, 6), [(2, 3, 1.0), (3, 4, 1.0), (3, 5, 0.9999999), (5, 5, 0.1)]),
     _cells((6, 6), [(1, 1, 0.1), (2, 3, 1.0), (3, 4, 1.0), (3, 5, 0.9999999)]),
     np.array([0.07868449362225295, 0.19671123405563237, 0.14676502228369448,
               0.2950668510834486, 0.07376671277086215, 0.20900568618410942]),
     np.full(6, 0.15), 0.38671875),
    (_cells((6, 6), [(2, 3, 1.0), (3, 4, 1.0), (3, 5, 0.9999999)]),
     _cells((6, 6), [(2, 3, 1.0), (3, 4, 1.0), (3, 5, 0.9999999)]),
     np.array([0.14512471655328799, 0.05668934240362812, 0.29024943310657597,
               0.14512471655328799, 0.14512471655328799, 0.21768707482993196]),
     np.full(6, 0.15), 0.375),
    (np.zeros((3, 4)), _cells((3, 4), [(2, 1, 1.0), (2, 2, 0.9999999)]),
     np.array([0.21311475409836064, 0.5245901639344263, 0.26229508196721313]),
     np.full(4, 0.1), 0.0078125),
    # Rewards 1 and 0.9999999: GLOP at its default tolerances stopped 1.3e-8 below the optimum.
    (_cells((5, 6), [(0, 0, 0.75), (0, 2, 0.9999999), (0, 5, 1.0)]),
     _cells((5, 6), [(0, 0, 0.00390625), (0, 2, 1.0), (0, 5, 1.0), (4, 3, 0.5), (4, 4, 1.0),
                     (4, 5, 1.0)]),
     np.array([7.0, 8.0, 4.0, 4.0, 6.0]) / 29.0, np.array([0.1, 0.1, 0.25, 0.1, 0.1, 0.1]), 1.0),
]


@pytest.mark.parametrize("instance", NEAR_DEGENERATE)
def test_near_degenerate_instances(instance: Instance) -> None:
    check_context_lp(instance)


def check_context_lp(instance: Instance) -> None:
    """Optimal (against GLOP) and feasible; when no plan meets the budget, the cheapest."""
    mu, cost, f, alpha, budget = instance
    solution = context_lp(mu, cost, f, alpha, budget)
    reference, status = context_lp_reference(mu, cost, f, alpha, budget)
    assert solution.status == status
    assert_plan_feasible(solution.p, cost, f, alpha, budget, solution.status)
    if status in (OPTIMAL, CAPS_INFEASIBLE):
        assert solution.objective == pytest.approx(reference, abs=1e-9)
    else:  # the cheapest plan: no plan spends less
        least = float(np.sum(f[:, None] * solution.p * cost))
        other = context_lp(mu, cost, f, alpha, least * (1.0 + 1e-9))
        assert other.status in (OPTIMAL, CAPS_INFEASIBLE)


@settings(max_examples=200, deadline=None)
@given(instances(max_x=1, max_m=8))
def test_one_context_is_route_opt(instance: Instance) -> None:
    mu, cost, f, alpha, budget = instance
    solution = context_lp(mu, cost, f, alpha, budget)
    routed = route_opt(mu[0], cost[0], alpha, budget)
    assert solution.status == routed.status
    if routed.status in (OPTIMAL, CAPS_INFEASIBLE):
        assert solution.objective == pytest.approx(routed.objective, abs=1e-9)
        return
    # No plan meets the budget: both spend the least; RouteOPT then takes the most reward at
    # exactly that spend, ContextLP at up to 1e-12 (relative) above it: never less reward.
    spend, least = float(solution.p[0] @ cost[0]), float(routed.p @ cost[0])
    assert spend == pytest.approx(least, rel=1e-9, abs=1e-12)
    assert solution.objective >= routed.objective - 1e-9


def test_the_budget_goes_where_it_buys_most_reward() -> None:
    # Two equally frequent contexts, a cheap and a dear model; budget 0.5 per query.  In
    # "easy" the dear model adds 0.1 reward for 0.9 USD, in "hard" 0.6 for 0.9 USD: the
    # whole slack goes to "hard" (where it buys 0.667 reward per USD, not 0.111).
    mu = np.array([[0.8, 0.9], [0.2, 0.8]])
    cost = np.array([[0.1, 1.0], [0.1, 1.0]])
    solution = context_lp(mu, cost, [0.5, 0.5], [1.0, 1.0], 0.5)
    assert solution.status == OPTIMAL
    assert np.allclose(solution.p, [[1.0, 0.0], [1 / 9, 8 / 9]])
    assert solution.objective == pytest.approx(0.5 * 0.8 + 0.5 * (0.2 / 9 + 0.8 * 8 / 9))
    assert solution.budget_price == pytest.approx((0.8 - 0.2) / 0.9)
    # Per query instead (RouteOPT in each context with budget 0.5) earns less.
    per_query = 0.5 * route_opt(mu[0], cost[0], [1, 1], 0.5).objective \
        + 0.5 * route_opt(mu[1], cost[1], [1, 1], 0.5).objective
    assert solution.objective > per_query + 0.05


def test_shares_are_held_over_all_traffic_not_per_context() -> None:
    # The best model in both contexts may take half the traffic: the plan gives it all of the
    # context where it is worth most (0.9 ahead there, 0.3 in the other), none of the other.
    # One more unit of its share would move a query of the other context: worth 0.3.
    mu = np.array([[1.0, 0.1], [0.9, 0.6]])
    cost = np.zeros((2, 2))
    solution = context_lp(mu, cost, [0.5, 0.5], [0.5, 1.0], 1.0)
    assert np.allclose(solution.p, [[1.0, 0.0], [0.0, 1.0]])
    assert solution.share_price.tolist() == pytest.approx([0.3, 0.0])


@pytest.mark.parametrize(("alpha", "budget", "status"), [
    ([0.3, 0.3], 10.0, CAPS_INFEASIBLE),
    ([1.0, 1.0], 0.01, BUDGET_INFEASIBLE),
    ([0.3, 0.3], 0.01, CAPS_BUDGET_INFEASIBLE),
])
def test_infeasible_plans_are_defined(alpha: list[float], budget: float, status: str) -> None:
    mu = np.array([[0.9, 0.5], [0.7, 0.4]])
    cost = np.array([[1.0, 0.2], [0.8, 0.3]])
    solution = context_lp(mu, cost, [0.4, 0.6], alpha, budget)
    assert solution.status == status
    if status == BUDGET_INFEASIBLE:  # the cheapest plan: every context on its cheapest model
        assert np.allclose(solution.p, [[0.0, 1.0], [0.0, 1.0]])
    elif status == CAPS_BUDGET_INFEASIBLE:  # ... within the shares, scaled to 0.5 each
        assert np.allclose(solution.p, [[0.0, 1.0], [5 / 6, 1 / 6]])


@pytest.mark.parametrize(("args", "message"), [
    (([[0.5]], [[0.1]], [0.5], [1.0], 0.3), "freq: must sum to 1"),
    (([[0.5, 0.2]], [[0.1]], [1.0], [1.0], 0.3), "equal non-empty"),
    (([[0.5]], [[-0.1]], [1.0], [1.0], 0.3), "cost: must be >= 0"),
    (([[math.nan]], [[0.1]], [1.0], [1.0], 0.3), "mu: contains NaN"),
])
def test_context_lp_rejects_malformed_instances(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        context_lp(*args)  # type: ignore[arg-type]


def brute_force(mu: np.ndarray, cost: np.ndarray, f: np.ndarray, alpha: np.ndarray,
                budget: float, k: int) -> float | None:
    """The best ContextLP value over every k-subset whose shares (scaled by the least factor
    that lets some k models carry all traffic) can carry it; None if none meets the budget."""
    top = sum(sorted(alpha, reverse=True)[:k])
    caps = alpha / top if top < 1.0 - 1e-12 else alpha
    best = None
    for subset in itertools.combinations(range(mu.shape[1]), k):
        cols = list(subset)
        solution = context_lp(mu[:, cols], cost[:, cols], f, caps[cols], budget)
        if solution.status == OPTIMAL:
            best = solution.objective if best is None else max(best, solution.objective)
    return best


@settings(max_examples=150, deadline=None)
@given(instances(max_x=4, max_m=7), st.integers(1, 5))
def test_context_deploy_opt_is_the_best_set(instance: Instance, m_max: int) -> None:
    mu, cost, f, alpha, budget = instance
    solution = context_deploy_opt(mu, cost, f, alpha, budget, m_max)
    k = min(m_max, mu.shape[1])
    assert len(solution.selected) == k and list(solution.selected) == sorted(solution.selected)
    best = brute_force(mu, cost, f, alpha, budget, k)
    if best is None:
        assert solution.status in (BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE)
    else:
        assert solution.status in (OPTIMAL, CAPS_INFEASIBLE)
        assert solution.objective == pytest.approx(best, abs=1e-9)
        # Planning all contexts alike is one of the plans considered: never worth more.
        flat = deploy_opt(f @ mu, f @ cost, alpha, budget, m_max)
        if flat.status in (OPTIMAL, CAPS_INFEASIBLE):
            assert solution.objective >= flat.objective - 1e-9


def test_dominated_models_are_pruned_without_changing_the_optimum() -> None:
    # Model 2 is worse than 0 and 1 in both contexts: with m_max = 2 it is never needed.
    mu = np.array([[0.9, 0.8, 0.1], [0.7, 0.9, 0.2]])
    cost = np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    solution = context_deploy_opt(mu, cost, [0.5, 0.5], [1.0, 1.0, 1.0], 1.0, 2)
    assert solution.selected == (0, 1)
    assert np.allclose(solution.p, [[1.0, 0.0], [0.0, 1.0]])


@settings(max_examples=150, deadline=None)
@given(instances(max_x=5, max_m=8), st.integers(1, 6))
def test_context_deploy_opt_plan_is_context_lp_over_the_selection(instance: Instance,
                                                                   m_max: int) -> None:
    # The plan may be read off an earlier solve instead of solving ContextLP over the selected
    # set again: it must be feasible there and worth as much as that solve.
    mu, cost, f, alpha, budget = instance
    solution = context_deploy_opt(mu, cost, f, alpha, budget, m_max)
    cols = list(solution.selected)
    k = len(cols)
    top = sum(sorted(alpha, reverse=True)[:k])
    caps = alpha / top if top < 1.0 - 1e-12 else alpha
    again = context_lp(mu[:, cols], cost[:, cols], f, caps[cols], budget)
    assert solution.p.shape == (mu.shape[0], k)
    if solution.status in (OPTIMAL, CAPS_INFEASIBLE):
        assert_plan_feasible(solution.p, cost[:, cols], f, caps[cols], budget, again.status)
        assert solution.objective == pytest.approx(again.objective, abs=1e-12)
        assert solution.objective == math.fsum(
            (f[:, None] * solution.p * mu[:, cols]).ravel().tolist())


def _engine_like(seed: int, n_ctx: int = 12, n_mod: int = 9) -> Instance:
    """Scores in [0, 1], a budget between the cheapest and the dearest model, equal shares that
    K = 4 models fill exactly (the engine's alpha = 0.25): every share binds."""
    rng = np.random.default_rng(seed)
    mu = np.clip(rng.random(n_mod)[None, :] * 0.6 + rng.random((n_ctx, n_mod)) * 0.4, 0, 1)
    cost = rng.random(n_mod)[None, :] * rng.uniform(0.5, 1.5, (n_ctx, n_mod))
    weights = rng.uniform(0.05, 1.0, n_ctx)
    return (mu, cost, weights / weights.sum(), np.full(n_mod, 0.25),
            float(np.quantile(cost, 0.4)))


@pytest.mark.parametrize("seed", range(12))
def test_subset_search_matches_brute_force_and_scip(seed: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import solvers.context_deploy as module

    mu, cost, f, alpha, budget = _engine_like(seed)
    solution = context_deploy_opt(mu, cost, f, alpha, budget, 4)
    best = brute_force(mu, cost, f, alpha, budget, 4)
    assert best is not None and solution.status == OPTIMAL
    assert solution.objective == pytest.approx(best, abs=1e-12)
    monkeypatch.setattr(module, "_MAX_SUBSETS", 0)  # step d by SCIP
    by_scip = context_deploy_opt(mu, cost, f, alpha, budget, 4)
    assert by_scip.objective == pytest.approx(best, abs=1e-9)


def test_relaxation_is_reused_when_it_is_the_same_program(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import solvers.context_deploy as module

    calls: list[int] = []

    def counted(*args: object) -> object:
        calls.append(1)
        return context_lp(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "context_lp", counted)
    mu = np.array([[0.9, 0.8, 0.1], [0.7, 0.9, 0.2]])
    cost = np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    everything = context_deploy_opt(mu, cost, [0.5, 0.5], [1.0, 1.0, 1.0], 1.0, 3)
    assert len(calls) == 1 and everything.selected == (0, 1, 2)
    calls.clear()
    two = context_deploy_opt(mu, cost, [0.5, 0.5], [1.0, 1.0, 1.0], 1.0, 2)
    assert len(calls) == 1 and two.selected == (0, 1)
    assert np.array_equal(two.p, [[1.0, 0.0], [0.0, 1.0]])

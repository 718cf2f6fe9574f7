"""The contextual policies: contexts, (context, model) statistics with a pooled prior, the
plan that holds the budget and the shares over all traffic, and the audit trail."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from schemas import DeploymentDecision, QueryFeatures, RoutingDecision
from solvers import BUDGET_INFEASIBLE
from stageroute.backtest.driver import Workload, drive
from stageroute.engine import EngineState, initial_state, restore, snapshot
from stageroute.policies import ModelStats
from stageroute.policies.context_stats import Cell, Prior, context_key, shrunk_reward
from stageroute.verify import rederive_deployment, verify
from tests.factories import (
    answer,
    arrived,
    check_outputs,
    deployments,
    encoded,
    make_config,
    only,
    query,
    routings,
    run_log,
    stage,
    state_view,
    step,
)

GAMMA = 0.5


def radius(var: float, n: float) -> float:
    return math.sqrt(GAMMA * var / n) + GAMMA / n


# --- contexts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("features", "source", "key"), [
    (None, "task", None),
    (QueryFeatures(), "task", None),
    (QueryFeatures(task="mbpp"), "task", "mbpp"),
    (QueryFeatures(task=""), "task", None),
    (QueryFeatures(tags=["b", "a", "b"]), "tags", "a,b"),  # a set: order and repeats ignored
    (QueryFeatures(task="mbpp"), "tags", None),
    (QueryFeatures(task="mbpp", tags=["py"]), "task+tags", "mbpp|py"),
    (QueryFeatures(tags=["py"]), "task+tags", "|py"),
    (QueryFeatures(vector=[0.1, 0.7, 0.7, 0.2]), "vector", "v1"),  # the first largest
    (QueryFeatures(task="mbpp"), "vector", None),
])
def test_context_key(features: QueryFeatures | None, source: str, key: str | None) -> None:
    assert context_key(features, source) == key


@pytest.mark.parametrize("params", [{"context": "prompt"}, {"prior_weight": -1},
                                    {"replan_every": 1.5}, {"max_contexts": 0}])
def test_bad_policy_parameters_are_rejected(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="policy parameter"):
        initial_state(make_config(policy="contextual", policy_params=params))


# --- scores: a pooled prior per (context, model) ----------------------------------------------


def test_shrinkage_is_the_posterior_of_prior_and_cell() -> None:
    prior = Prior(n=100, mean_r=0.5, var_r=0.25, c_hat=0.2, has_cost=True)
    cell = Cell()
    for reward in (1.0, 1.0, 1.0, 0.0):
        cell.observe(reward, 0.1)
    total, mean, var = shrunk_reward(cell, prior, weight=4.0)
    assert total == 8.0
    assert mean == pytest.approx((4 * 0.5 + 4 * 0.75) / 8)
    # The mixture's variance: each part's own plus its distance to the common mean.
    assert var == pytest.approx((4 * (0.25 + 0.125**2) + 4 * (0.1875 + 0.125**2)) / 8)
    # A prior is never surer than the observations it comes from: w_m = min(w, n_m).
    assert shrunk_reward(cell, Prior(2, 0.5, 0.25, 0.2, True), weight=4.0)[0] == 6.0


def policy_of(name: str, **params: Any) -> Any:
    return initial_state(make_config(policy=name, policy_params=params)).policy


def test_contextual_scores_an_optimistic_bound_greedy_the_mean() -> None:
    prior = Prior(n=50, mean_r=0.6, var_r=0.2, c_hat=0.3, has_cost=True)
    cell = Cell()
    cell.observe(0.9, 0.5)
    optimistic, greedy = cell.copy(), cell.copy()
    policy_of("contextual", prior_weight=9.0).score_cell("x", "m", optimistic, prior, GAMMA)
    policy_of("contextual_greedy", prior_weight=9.0).score_cell("x", "m", greedy, prior, GAMMA)
    total, mean, var = shrunk_reward(cell, prior, 9.0)
    assert optimistic.reward == pytest.approx(min(1.0, mean + 2 * radius(var, total)))
    assert greedy.reward == pytest.approx(mean) and mean == pytest.approx(0.63)
    assert optimistic.cost == greedy.cost == pytest.approx((9 * 0.3 + 0.5) / 10)


def test_a_model_without_observations_scores_one_in_every_context() -> None:
    cell = Cell()
    policy_of("contextual").score_cell("x", "m", cell, Prior(0, 0.0, 0.0, 0.05, False), GAMMA)
    assert (cell.reward, cell.cost) == (1.0, 0.05)  # unexplored: tried; a probe's cost_min


# --- routing: contexts, and queries without one ---------------------------------------------


def trained(policy: str = "contextual", **overrides: Any) -> tuple[EngineState, list[Any]]:
    """Two priced models, 60 answered queries of tasks "a" and "b": m0 is good at "a", m1 at
    "b"; feedback costs as priced."""
    state, out = run_log([arrived("m0", price=0.1, cost_max=1.0),
                          arrived("m1", price=0.3, cost_max=1.0), stage(0)],
                         policy=policy, m_max=2, budget=0.5, **overrides)
    for i in range(60):
        task = "ab"[i % 2]
        decision = only(step(state, query(f"q{i}", task=task)), RoutingDecision)
        good = (decision.model_id == "m0") == (task == "a")
        out.append(decision)
        step(state, answer(decision, reward=0.9 if good else 0.2,
                           cost=0.1 if decision.model_id == "m0" else 0.3))
    return state, out


def pooled_scores(state: EngineState) -> tuple[list[float], list[float]]:
    """StageRoute's scores of the deployed models from their pooled statistics."""
    return [m.mu_u for m in state.deployed], [m.c_hat for m in state.deployed]


def test_a_query_without_context_is_routed_on_the_pooled_statistics() -> None:
    state, _ = trained()
    for i, features in enumerate([None, QueryFeatures(prompt_tokens=12)]):
        decision = only(step(state, query(f"none{i}").model_copy(update={"features": features})),
                        RoutingDecision)
        assert (decision.mu_u, decision.c_l) == pooled_scores(state)


def test_a_never_seen_context_is_routed_on_the_pooled_statistics() -> None:
    state, _ = trained()
    models: list[ModelStats] = state.deployed
    decision = only(step(state, query("new", task="never-seen")), RoutingDecision)
    # The pooled mean and variance, with the confidence of min(w, n_m) observations, and the
    # pooled cost estimate: the prior, since the context has no observations of its own.
    w = 10.0
    expected = [min(1.0, m.mean_r + 2 * radius(m.m2_r / m.n, min(w, m.n))) for m in models]
    assert decision.mu_u == pytest.approx(expected, abs=1e-12)
    assert decision.c_l == [m.c_hat for m in models]
    # ... unlike a context with observations, which is scored by its own (and is surer:
    # the new context's bound is wider than that of "a", whose 28 observations of m0 agree).
    seen = only(step(state, query("seen", task="a")), RoutingDecision)
    assert seen.mu_u[0] < decision.mu_u[0]


def test_contexts_beyond_the_limit_are_routed_as_without_context() -> None:
    state, _ = run_log([arrived("m0", price=0.1), arrived("m1", price=0.3), stage(0)],
                       policy="contextual", policy_params={"max_contexts": 2}, m_max=2)
    for task in ("a", "b", "c", "d"):
        step(state, query(f"q-{task}", task=task))
    assert state.context is not None
    assert state.context.names == ["", "a", "b"]
    assert state.context.counts == [2, 1, 1]  # "c" and "d" counted as no context


def test_each_context_learns_its_own_best_model() -> None:
    state, decisions = trained()
    last = {task: next(d for d in reversed(decisions) if d.query_id[1:].isdigit()
                       and int(d.query_id[1:]) % 2 == "ab".index(task)) for task in "ab"}
    assert last["a"].p[0] > 0.5 and last["b"].p[1] > 0.5
    book = state.context
    assert book is not None
    cells = {task: book.cells[book.keys[task]] for task in "ab"}
    assert cells["a"]["m0"].mean_r == pytest.approx(0.9)
    assert cells["b"]["m1"].mean_r == pytest.approx(0.9)
    assert sum(c.n for row in cells.values() for c in row.values()) == 60


# --- the plan: budget and shares over all traffic ---------------------------------------------


def two_task_oracle(budget: float, alpha: float = 1.0, horizon: int = 2000,
                    policy: str = "contextual_oracle", seed: int = 3,
                    ) -> tuple[EngineState, list[Any]]:
    """Tasks "easy" and "hard" in equal shares; m0 cheap, m1 dear.  In "easy" m0 is nearly
    as good as m1; in "hard" only m1 is good."""
    means = {"easy": {"m0": [0.85, 0.1], "m1": [0.9, 1.0]},
             "hard": {"m0": [0.2, 0.1], "m1": [0.8, 1.0]}}
    pooled = {m: [(means["easy"][m][0] + means["hard"][m][0]) / 2, means["easy"][m][1]]
              for m in ("m0", "m1")}
    params = {"means": pooled, "context_means": means}
    config = make_config(policy=policy, budget=budget, m_max=2, seed=seed,
                         policy_params=params if "oracle" in policy else {})
    rng = random.Random(seed)
    tasks = [rng.choice(["easy", "hard"]) for _ in range(horizon)]

    def outcome(t: int, model_id: str) -> tuple[float, float]:
        reward, cost = means[tasks[t]][model_id]
        return float(rng.random() < reward), cost

    exogenous = {0: [arrived("m0", alpha=alpha, price=0.1, cost_max=1.0),
                     arrived("m1", alpha=alpha, price=1.0, cost_max=1.0), stage(0)]}
    state = initial_state(config)
    outputs: list[Any] = []
    workload = Workload(horizon, exogenous, lambda t: query(f"q{t}", float(t), tasks[t]),
                        outcome)
    for _ in drive(state, workload, lambda seq, e, out: outputs.extend(out)):
        pass
    return state, outputs


def test_the_budget_moves_to_the_context_where_it_buys_most() -> None:
    # Budget 0.55 per query: the dear model for every "hard" query and none of the "easy".
    state, outputs = two_task_oracle(budget=0.55)
    book = state.context
    assert book is not None and book.plan is not None
    rows = {task: book.plan.rows[book.keys[task]] for task in ("easy", "hard")}
    assert rows["hard"] is not None and rows["easy"] is not None
    assert rows["hard"].budget > 0.9 and rows["easy"].budget < 0.2
    decisions = routings(outputs)
    hard = [d for d in decisions if d.budget > 0.55]
    assert len(hard) > 0.4 * len(decisions)
    assert state.spent / state.counters["feedback"] <= 0.55 * 1.02
    # StageRoute's oracle, holding the same budget per query, earns less: it has to mix the
    # two models alike in both tasks.
    _, flat_out = two_task_oracle(budget=0.55, policy="oracle")
    assert expected_reward(outputs) > expected_reward(flat_out) + 0.1


def expected_reward(outputs: list[Any]) -> float:
    means = {"easy": {"m0": 0.85, "m1": 0.9}, "hard": {"m0": 0.2, "m1": 0.8}}
    rng = random.Random(3)
    tasks = [rng.choice(["easy", "hard"]) for _ in range(2000)]
    decisions = routings(outputs)
    return sum(sum(p * means[tasks[int(d.query_id[1:])]][m] for p, m in zip(d.p, d.deployed))
               for d in decisions) / len(decisions)


def test_shares_are_held_over_all_traffic() -> None:
    # m1 may take half of the traffic: the plan gives it the "hard" half, not half of each.
    state, outputs = two_task_oracle(budget=10.0, alpha=0.5)
    decisions = routings(outputs)
    to_m1 = sum(d.model_id == "m1" for d in decisions) / len(decisions)
    assert to_m1 <= 0.5 + 3 * math.sqrt(0.25 / len(decisions))
    book = state.context
    assert book is not None and book.plan is not None
    hard = book.plan.rows[book.keys["hard"]]
    easy = book.plan.rows[book.keys["easy"]]
    assert hard is not None and easy is not None
    assert hard.caps[1] > 0.9 and easy.caps[1] < 0.1


def test_a_budget_below_every_plan_routes_the_cheapest_plan_flagged() -> None:
    state, outputs = two_task_oracle(budget=0.05, horizon=200)
    decisions = routings(outputs)
    assert all(d.model_id == "m0" for d in decisions)
    assert state.counters["budget_infeasible"] == len(decisions)
    assert {d.status for d in decisions} == {BUDGET_INFEASIBLE}


# --- deployment by contextual value -----------------------------------------------------------


def test_the_deployment_serves_the_mix_of_contexts() -> None:
    # Two specialists beat one generalist on a mix of their tasks, though the generalist has
    # the best average: with room for two models, the contextual oracle deploys both
    # specialists; StageRoute's oracle keeps the generalist.
    means = {"a": {"gen": [0.7, 0.1], "spa": [0.95, 0.1], "spb": [0.3, 0.1]},
             "b": {"gen": [0.7, 0.1], "spa": [0.3, 0.1], "spb": [0.95, 0.1]}}
    pooled = {"gen": [0.7, 0.1], "spa": [0.625, 0.1], "spb": [0.625, 0.1]}
    events = [arrived(m, price=0.1) for m in ("gen", "spa", "spb")]
    events += [query("q0", task="a"), query("q1", task="b"), stage(1)]
    for name, params in (("contextual_oracle", {"means": pooled, "context_means": means}),
                         ("oracle", {"means": pooled})):
        _, out = run_log(events, policy=name, policy_params=params, m_max=2)
        last = deployments(out)[-1]
        assert sorted(last.selected) == (["spa", "spb"] if name == "contextual_oracle"
                                         else ["gen", "spa"])


# --- audit trail --------------------------------------------------------------------------------


def test_contextual_runs_are_deterministic_and_every_decision_re_derived() -> None:
    state, outputs = two_task_oracle(budget=0.55, policy="contextual", horizon=600)
    check_outputs(outputs, state.config.seed)
    _, again = two_task_oracle(budget=0.55, policy="contextual", horizon=600)
    assert encoded(again) == encoded(outputs)


def journal_of(policy: str, horizon: int = 400) -> tuple[Any, list[Any], list[Any]]:
    config = make_config(policy=policy, budget=0.55, m_max=2, seed=5)
    rng = random.Random(5)
    state = initial_state(config)
    journal: list[Any] = []
    outputs: list[Any] = []

    def outcome(t: int, model_id: str) -> tuple[float, float]:
        return float(rng.random() < (0.8 if model_id == "m1" else 0.5)), \
            1.0 if model_id == "m1" else 0.1

    exogenous = {0: [arrived("m0", price=0.1, cost_max=1.0), arrived("m1", price=1.0,
                                                                      cost_max=1.0),
                     arrived("m2", price=0.5, cost_max=1.0), stage(0)],
                 200: [stage(1)]}
    workload = Workload(horizon, exogenous,
                        lambda t: query(f"q{t}", float(t), ("a", "b", None)[t % 3]), outcome)

    def record(seq: int, event: Any, out: list[Any]) -> None:
        journal.append((seq, event.model_dump(mode="json")))
        outputs.extend(out)

    for _ in drive(state, workload, record):
        pass
    return config, journal, outputs


def test_audit_verify_passes_a_contextual_run_and_catches_tampering() -> None:
    config, journal, outputs = journal_of("contextual")
    routing = [o.model_dump() for o in outputs if isinstance(o, RoutingDecision)]
    deploys = [o.model_dump() for o in outputs if isinstance(o, DeploymentDecision)]
    assert len(deploys) == 2
    report = verify(config, journal, routing, deploys)
    assert report.ok, report.mismatches[:3]
    assert report.routing_checked == 400 and report.deployments_checked == 2
    # A stored plan share that is not a distribution, an objective below what planning every
    # context alike would reach, a budget changed on a routing row: each is caught.
    bad_d = [{**deploys[0], "d": [0.5] * len(deploys[0]["d"])}, deploys[1]]
    assert not verify(config, journal, routing, bad_d).ok
    assert rederive_deployment({**deploys[0], "objective": 0.0}) != []
    bad_budget = [{**routing[7], "budget": routing[7]["budget"] * 2}, *routing[8:]]
    assert not verify(config, journal, routing[:7] + bad_budget, deploys).ok


def test_snapshot_keeps_contexts_cells_and_plan() -> None:
    state, _ = trained()
    blob = snapshot(state)
    restored = restore(blob)
    assert snapshot(restored) == blob
    assert restored.context is not None and state.context is not None
    assert restored.context.to_json() == state.context.to_json()
    for i, task in enumerate(("a", "b", None, "c")):
        one = step(state, query(f"after{i}", task=task))
        other = step(restored, query(f"after{i}", task=task))
        assert one == other


def test_a_version_2_snapshot_of_a_non_contextual_run_still_restores() -> None:
    import json
    import zlib

    state, _ = trained(policy="stageroute")
    waiting = [only(step(state, query(f"open{i}", task="a")), RoutingDecision) for i in range(2)]
    doc = json.loads(zlib.decompress(snapshot(state)))
    doc["version"] = 2
    del doc["context"]
    # Version 2 rows: query id, model, time, estimate (no context).
    doc["queries"] = [row[:4] for row in doc["queries"]]
    assert doc["queries"], "queries awaiting feedback are part of what is restored"
    restored = restore(zlib.compress(json.dumps(doc).encode()))
    assert step(restored, query("next", task="a")) == step(state, query("next", task="a"))
    for decision in waiting:
        assert step(restored, answer(decision)) == step(state, answer(decision)) == []
    assert state_view(restored) == state_view(state)


def test_a_rejected_query_changes_no_context_count() -> None:
    state, _ = run_log([query("q0", task="a")], policy="contextual")  # no model: dead letter
    assert state.context is not None and state.context.counts == [0]
    assert state.counters["dead_letters"] == 1

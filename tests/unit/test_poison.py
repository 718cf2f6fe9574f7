"""No event can break the engine: the contract bounds numbers to what the math and the
database carry, ``apply`` is atomic, and statistics stay finite under extreme valid input."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    DeadLetter,
    EventRejected,
    Feedback,
    ModelArrived,
    ModelExpired,
    StageBoundary,
    decode_decision,
    decode_event,
    encode,
)
from schemas.base import MAX_INDEX, MAX_SECONDS, MAX_USD, MIN_SHARE
from stageroute.engine import apply, atomic, restore, snapshot
from stageroute.engine.state import EngineState
from tests.factories import (
    arrived,
    new_state,
    only,
    query,
    routings,
    run_log,
    stage,
    state_view,
    step,
)

# --- the contract's bounds ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    # The BIGINT column overflowed at commit and stopped the partition for good.
    ('{"type":"stage_boundary","stage":9223372036854775808,"time":0}', "invalid_value"),
    ('{"type":"model_arrived","model_id":"m","alpha":5e-324,"time":0}', "invalid_value"),
    ('{"type":"model_arrived","model_id":"m","alpha":1,"cost_min":1e150,"time":0}',
     "invalid_cost"),
    ('{"type":"feedback","query_id":"q","model_id":"m","reward":1,"cost":1.7e308,"time":0}',
     "invalid_cost"),
    ('{"type":"query","query_id":"q","time":1e300}', "invalid_value"),
    ('{"type":"query","query_id":"q","time":0,"features":{"prompt_tokens":1e400}}',
     "schema_mismatch"),
    ('{"type":"model_arrived","model_id":"m","alpha":1,"time":0,"metadata":{"n":1e400}}',
     "schema_mismatch"),
])
def test_the_contract_rejects_numbers_beyond_what_the_math_and_database_carry(
        raw: str, reason: str) -> None:
    with pytest.raises(EventRejected) as rejected:
        decode_event(raw)
    assert rejected.value.reason == reason


def test_the_largest_valid_numbers_are_accepted() -> None:
    assert decode_event(encode(StageBoundary(stage=MAX_INDEX, time=MAX_SECONDS)))
    assert decode_event(encode(ModelArrived(model_id="m", alpha=MIN_SHARE, cost_min=MAX_USD,
                                            cost_max=MAX_USD, time=0.0)))


# --- atomic apply --------------------------------------------------------------------------------


def test_a_handler_that_raises_leaves_the_state_as_it_was_and_yields_a_dead_letter() -> None:
    # The oracle policy raises for a model it has no true means for: a real failure inside
    # DeployOPT's scoring, midway through a stage boundary (after the stage moved on).
    means = {"a": [0.5, 0.1]}
    state, _ = run_log([arrived("a"), stage(0), query("q1"), arrived("b")],
                       policy="oracle", policy_params={"means": means})
    before = state_view(state)
    letter = only(step(state, stage(1, 1.0)), DeadLetter)
    assert letter.reason == "internal_error" and "no true means for model 'b'" in letter.detail
    assert letter.seq == before["seq"]
    after = state_view(state)
    assert after["seq"] == before["seq"] + 1
    assert after["counters"]["dead_letters"] == before["counters"]["dead_letters"] + 1
    for view in (before, after):
        view.pop("seq"), view["counters"].pop("dead_letters")
    assert after == before, "the stage, the deployed set and the registry are as they were"
    # The engine goes on: the next query is routed over the unchanged deployed set.
    assert step(state, query("q2", 2.0))[0].model_id == "a"


def _solver_fails(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("solver failed")


@pytest.mark.parametrize(("target", "event", "stale"), [
    # ContextDeployOPT at a stage start: after the priors and every cell were rescored.
    ("stageroute.engine.context.context_deploy_opt", stage(1, 1.0), False),
    # ContextLP for a query of a new context: after it was counted and the cells rescored.
    ("stageroute.engine.context.context_lp", query("q9", 1.0, task="z"), False),
    # ContextLP for a query of a known context whose plan is due: after it was counted (the
    # count is put back into the copy taken before the re-plan).
    ("stageroute.engine.context.context_lp", query("q9", 1.0, task="x"), True),
    # RouteOPT for a query of a known context, no re-plan: after it was counted.
    pytest.param("stageroute.engine.core.solve_lists", query("q9", 1.0, task="x"), False,
                 marks=pytest.mark.interpreted_only),
])
def test_a_contextual_handler_that_raises_leaves_the_contexts_as_they_were(
        monkeypatch: pytest.MonkeyPatch, target: str, event: Any, stale: bool) -> None:
    state, out = run_log([arrived("a"), arrived("b"), stage(0),
                          *(query(f"q{i}", task=("x", "y", None)[i % 3]) for i in range(6))],
                         policy="contextual", m_max=2)
    for decision in out:
        if hasattr(decision, "query_id"):
            step(state, Feedback(query_id=decision.query_id, model_id=decision.model_id,
                                 reward=0.5, cost=0.1, time=0.0))
    assert state.context is not None
    if stale:
        state.context.since_plan = 10**6
        assert state.context.stale()
    before = state_view(state)
    assert before["context"]["names"] == ["x", "y"] and before["context"]["plan"] is not None
    monkeypatch.setattr(target, _solver_fails)
    letter = only(step(state, event), DeadLetter)
    assert letter.reason == "internal_error" and "solver failed" in letter.detail
    after = state_view(state)
    for view in (before, after):
        view.pop("seq"), view["counters"].pop("dead_letters")
    assert after == before, "the contexts, their cells, priors and plan are as they were"
    monkeypatch.undo()
    assert state_view(restore(snapshot(state))) == state_view(state)
    assert routings(step(state, query("q10", 2.0, task="x")))


@pytest.mark.interpreted_only
def test_a_contextual_feedback_that_raises_leaves_its_cell_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The ledger's settlement comes after the (context, model) cell took the feedback.
    state, _ = run_log([arrived("a"), stage(0), query("q0", task="x")], policy="contextual")
    step(state, Feedback(query_id="q0", model_id="a", reward=0.5, cost=0.1, time=0.0))
    step(state, query("q1", task="x"))
    before = state_view(state)
    monkeypatch.setattr("stageroute.engine.budget.Ledger.settle", _solver_fails)
    letter = only(step(state, Feedback(query_id="q1", model_id="a", reward=1.0, cost=0.3,
                                       time=0.0)), DeadLetter)
    assert letter.reason == "internal_error"
    after = state_view(state)
    for view in (before, after):
        view.pop("seq"), view["counters"].pop("dead_letters")
    assert after == before, "the cell's statistics and scores are as they were"
    # The scores a query reads (kept beside the plan, not in a snapshot) are put back too.
    twin = restore(snapshot(state))
    assert step(state, query("q2", task="x")) == step(twin, query("q2", task="x"))


def test_the_contextual_journal_does_not_outlive_its_event() -> None:
    state, _ = run_log([arrived("a"), arrived("b"), stage(0), query("q0", task="x")],
                       policy="contextual", m_max=2)
    book = state.context
    assert book is not None
    step(state, query("q1", task="y"))  # a new context: the journal copies the whole book
    step(state, Feedback(query_id="q0", model_id=state.queries["q0"].model_id, reward=0.5,
                         cost=0.1, time=0.0))  # a feedback: the journal copies a cell
    step(state, query("q1", task="y"))  # rejected (a duplicate)
    assert state.context is book
    assert (book.journal, book.before, book.counted, book.observed) == (False, None, None, None)


def test_capture_covers_every_field_of_the_engine_state() -> None:
    """``capture`` names the fields one by one (for speed): a new field must be added to it
    (or declared per-query, or the contextual book) before this passes."""
    names = {f.name for f in dataclasses.fields(EngineState)}
    covered = atomic.COVERED | atomic.PER_QUERY | atomic.CONTEXT_BOOK
    assert names == covered, names ^ covered


# --- extreme but valid events ---------------------------------------------------------------------

_floats = st.one_of(st.sampled_from([0.0, 5e-324, 1e-300, 1e-9, 0.5, 1.0, MAX_USD]),
                    st.floats(min_value=0.0, max_value=MAX_USD, allow_nan=False))
_times = st.one_of(st.sampled_from([0.0, 1.0, MAX_SECONDS]),
                   st.floats(min_value=0.0, max_value=MAX_SECONDS, allow_nan=False))
_models = st.sampled_from(["m0", "m1", "m2"])
_queries = st.sampled_from([f"q{i}" for i in range(6)])


@st.composite
def _event(draw: Any) -> Any:
    kind = draw(st.sampled_from(["arrive", "arrive", "expire", "stage", "query", "query",
                                 "feedback", "feedback"]))
    time = draw(_times)
    if kind == "arrive":
        low, high = sorted((draw(_floats), draw(_floats)))
        return ModelArrived(model_id=draw(_models), time=time,
                            alpha=draw(st.one_of(st.just(MIN_SHARE), st.floats(MIN_SHARE, 1.0))),
                            cost_min=draw(st.one_of(st.none(), st.just(low))),
                            cost_max=draw(st.one_of(st.none(), st.just(high))))
    if kind == "expire":
        return ModelExpired(model_id=draw(_models), time=time)
    if kind == "stage":
        return StageBoundary(stage=draw(st.one_of(st.integers(0, 5), st.just(MAX_INDEX))),
                             time=time)
    if kind == "query":
        return query(draw(_queries), time, draw(st.sampled_from([None, "x", "y"])))
    return Feedback(query_id=draw(_queries), model_id=draw(_models), time=time,
                    reward=draw(st.floats(0.0, 1.0)), cost=draw(_floats))


def _finite(view: dict[str, Any]) -> bool:
    numbers = [view["spent"], view["clock"]]
    for row in view["models"].values():
        numbers.extend(x for x in row[6:] if isinstance(x, float))
    return all(math.isfinite(x) for x in numbers)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(_event(), min_size=1, max_size=40),
       policy=st.sampled_from(["stageroute", "greedy", "thompson", "epsilon_greedy",
                               "contextual"]),
       budget=st.sampled_from([1e-9, 0.3, MAX_USD]))
def test_extreme_valid_events_never_raise_and_keep_statistics_finite(
        events: list[Any], policy: str, budget: float) -> None:
    state = new_state(policy=policy, budget=budget, cost_ceiling=MAX_USD, m_max=2)
    for event in events:
        before = state_view(state)
        _, outputs = apply(state, event)
        view = state_view(state)
        assert view["seq"] == before["seq"] + 1
        assert _finite(view), view
        for out in outputs:
            wire = encode(out)
            assert encode(decode_decision(wire)) == wire, "every output is valid on the wire"
            if isinstance(out, DeadLetter) and out.reason == "internal_error":
                for v in (before, view):
                    v.pop("seq"), v["counters"].pop("dead_letters")
                assert view == before
    assert state_view(restore(snapshot(state))) == state_view(state)


def test_a_huge_observed_cost_does_not_make_a_model_look_free() -> None:
    events = [arrived("a", cost_min=0.0, cost_max=1.0), stage(0)]
    events += [query(f"q{i}") for i in range(50)]
    state, out = run_log(events, gamma=0.5)
    for decision in out[1:]:
        step(state, Feedback(query_id=decision.query_id, model_id="a", reward=0.5, cost=0.1,
                             time=0.0))
    a = state.models["a"]
    assert a.c_l > 0.05
    step(state, query("huge"))
    step(state, Feedback(query_id="huge", model_id="a", reward=0.5, cost=MAX_USD, time=0.0))
    # Counted as the dearest the model's range allows: the mean goes up, the variance stays
    # finite and the cost bound is not pinned to cost_min.
    assert a.mean_c > 0.1 and math.isfinite(a.m2_c)
    assert a.c_l > 0.05
    assert state.spent == pytest.approx(50 * 0.1 + MAX_USD), "the spend counts what was paid"

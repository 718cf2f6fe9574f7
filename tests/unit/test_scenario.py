"""Backtest scenarios: stage starts, the order of exogenous events, schedule validation."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import DeploymentDecision, ModelArrived, ModelExpired, StageBoundary
from stageroute.backtest.scenario import (
    ModelWindow,
    Scenario,
    ScenarioError,
    all_live,
    equal_stages,
    parse_schedule,
)
from streams.data import DEFAULT_SCHEDULE
from tests.factories import new_state, step

MODELS = ["a", "b", "c"]
SOURCE = "sched.json"


def schedule(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"models": list(entries), **top}


def parse(doc: Any, horizon: int = 100, stages: int | None = None) -> Scenario:
    return parse_schedule(doc, MODELS, horizon, SOURCE, stages)


def cube_root_ceiling(t: int) -> int:
    k = 1
    while k**3 < t:
        k += 1
    return k


# --- stages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("horizon", "k"), [(1000, 10), (20000, 28), (27, 3), (64, 4), (1, 1),
                                            (2, 2), (9, 3)])
def test_default_stage_count_is_the_cube_root_ceiling(horizon: int, k: int) -> None:
    assert len(equal_stages(horizon)) == k


def test_stages_are_equal() -> None:
    assert equal_stages(1000) == tuple(range(0, 1000, 100))
    assert equal_stages(10, stages=4) == (0, 2, 5, 7)


@given(horizon=st.integers(1, 200_000))
def test_default_stages_start_at_zero_and_increase(horizon: int) -> None:
    starts = equal_stages(horizon)
    assert len(starts) == cube_root_ceiling(horizon)
    assert starts[0] == 0 and starts[-1] < horizon
    assert all(a < b for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize(("horizon", "stages"), [(10, 0), (10, 11), (0, None)])
def test_impossible_stage_counts_are_rejected(horizon: int, stages: int | None) -> None:
    with pytest.raises(ScenarioError, match="stages"):
        equal_stages(horizon, stages)


# --- events_before ----------------------------------------------------------------------------


def test_events_before_orders_expiries_arrivals_then_the_stage() -> None:
    scenario = Scenario(10, (
        ModelWindow("a", 0, 5),
        ModelWindow("b", 5, None, alpha=0.3, cost_min=0.1, cost_max=0.2),
        ModelWindow("c", 5, 10),     # expiry at the horizon: never happens
        ModelWindow("late", 10, None),  # arrival at the horizon: never happens
    ), (0, 5))
    at = scenario.events_before(default_alpha=0.5)
    assert sorted(at) == [0, 5]
    assert [(type(e), getattr(e, "model_id", None)) for e in at[5]] == [
        (ModelExpired, "a"), (ModelArrived, "b"), (ModelArrived, "c"), (StageBoundary, None)]
    assert [(type(e), getattr(e, "model_id", None)) for e in at[0]] == [
        (ModelArrived, "a"), (StageBoundary, None)]
    b = at[5][1]
    assert isinstance(b, ModelArrived)
    assert (b.alpha, b.cost_min, b.cost_max, b.time) == (0.3, 0.1, 0.2, 5.0)
    assert at[0][0].alpha == 0.5  # type: ignore[union-attr]
    assert [(e.stage, e.time) for e in (at[0][-1], at[5][-1])] == [(0, 0.0), (1, 5.0)]  # type: ignore[union-attr]


def test_a_stage_starting_with_a_change_sees_the_new_pool() -> None:
    at = Scenario(10, (ModelWindow("a", 0, 5), ModelWindow("b", 5, None)),
                  (0, 5)).events_before(1.0)
    state = new_state()
    for t in sorted(at):
        outputs = [out for event in at[t] for out in step(state, event)]
    decision = outputs[-1]
    assert isinstance(decision, DeploymentDecision)
    assert (decision.stage, decision.candidates, decision.selected) == (1, ["b"], ["b"])


def test_all_live() -> None:
    scenario = all_live(MODELS, 1000)
    assert scenario.windows == tuple(ModelWindow(m, 0, None) for m in MODELS)
    assert scenario.stage_starts == equal_stages(1000)


# --- parse_schedule ---------------------------------------------------------------------------


def test_parse_fractions_and_query_indices() -> None:
    scenario = parse(schedule({"model_id": "a", "arrive": 0.0, "expire": 0.5},
                              {"model_id": "b", "arrive": 0.25, "alpha": 0.5, "cost_min": 0.1},
                              {"model_id": "c", "expire": None}), horizon=100, stages=4)
    assert scenario.windows == (ModelWindow("a", 0, 50), ModelWindow("b", 25, None, 0.5, 0.1),
                                ModelWindow("c", 0, None))
    assert scenario.stage_starts == (0, 25, 50, 75)
    by_query = parse(schedule({"model_id": "a", "arrive": 3, "expire": 7.0}, unit="query"))
    assert by_query.windows == (ModelWindow("a", 3, 7),)


def test_the_bundled_default_schedule_parses() -> None:
    doc = json.loads(DEFAULT_SCHEDULE.read_text(encoding="utf-8"))
    names = [entry["model_id"] for entry in doc["models"]]
    scenario = parse_schedule(doc, names, 1000, str(DEFAULT_SCHEDULE))
    assert len(scenario.windows) == len(names) == 11
    assert scenario.stage_starts == equal_stages(1000)


A = {"model_id": "a"}
SCHEDULE_ERRORS = {
    "not an object": ([A], rf"^{SOURCE}: expected an object with a 'models' list"),
    "no models": (schedule(), rf"^{SOURCE}: the schedule lists no models"),
    "bad unit": (schedule(A, unit="days"), rf"^{SOURCE}: unit must be .*'days'"),
    "entry not an object": (schedule("a"), rf"^{SOURCE}: models\[0\]: expected an object"),
    "unknown model": (schedule(A, {"model_id": "zz"}),
                      rf"^{SOURCE}: models\[1\]: model 'zz' is not in the data"),
    "scheduled twice": (schedule(A, {"model_id": "b"}, {"model_id": "a"}),
                        rf"^{SOURCE}: models\[2\]: model 'a' is scheduled twice"),
    "expire before arrive": (schedule({"model_id": "a", "arrive": 0.5, "expire": 0.25}),
                             rf"^{SOURCE}: models\[0\]: expire \(25\) must come after arrive"),
    "expire at arrive": (schedule({"model_id": "a", "arrive": 0.5, "expire": 0.5}),
                         rf"^{SOURCE}: models\[0\]: expire \(50\) must come after arrive \(50\)"),
    "fraction above 1": (schedule({"model_id": "a", "arrive": 1.5}),
                         rf"^{SOURCE}: models\[0\]\.arrive: a fraction .* \[0, 1\], got 1\.5"),
    "negative fraction": (schedule(A, {"model_id": "b", "expire": -0.1}),
                          rf"^{SOURCE}: models\[1\]\.expire: a fraction .* got -0\.1"),
    "fractional query index": (schedule({"model_id": "a", "arrive": 2.5}, unit="query"),
                               rf"^{SOURCE}: models\[0\]\.arrive: a query index .* got 2\.5"),
    "not a number": (schedule({"model_id": "a", "arrive": "soon"}),
                     rf"^{SOURCE}: models\[0\]\.arrive: expected a number, got 'soon'"),
    "boolean time": (schedule({"model_id": "a", "arrive": True}),
                     rf"^{SOURCE}: models\[0\]\.arrive: expected a number"),
    "alpha zero": (schedule({"model_id": "a", "alpha": 0}),
                   rf"^{SOURCE}: models\[0\]\.alpha: .* \(0, 1\], got 0"),
    "alpha above 1": (schedule(A, {"model_id": "c", "alpha": 1.5}),
                      rf"^{SOURCE}: models\[1\]\.alpha: .* \(0, 1\], got 1\.5"),
    "negative cost": (schedule({"model_id": "a", "cost_max": -1}),
                      rf"^{SOURCE}: models\[0\]\.cost_max: a cost must be >= 0"),
    "empty price range": (schedule({"model_id": "a", "cost_min": 0.5, "cost_max": 0.2}),
                          rf"^{SOURCE}: models\[0\].*cost_m"),
}


@pytest.mark.parametrize(("doc", "message"), SCHEDULE_ERRORS.values(),
                         ids=SCHEDULE_ERRORS.keys())
def test_schedule_errors_name_the_source_and_the_entry(doc: Any, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        scenario = parse(doc)
        scenario.events_before(1.0)  # whatever parse lets through must make valid events
    assert re.search(message, str(caught.value)), str(caught.value)

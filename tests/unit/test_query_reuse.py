"""Query ids: one defined meaning for reuse, on which the engine, the audit trail's key and
``verify`` agree."""

from __future__ import annotations

from schemas import DeadLetter, RoutingDecision
from stageroute.engine.state import ANSWERED_REMEMBERED
from stageroute.verify import verify
from streams.audit.recorder import decision_row
from tests.factories import (
    arrived,
    feedback,
    make_config,
    only,
    query,
    run_log,
    stage,
    step,
)


def test_a_remembered_id_is_a_duplicate_a_forgotten_one_a_new_query() -> None:
    state, _ = run_log([arrived("a"), stage(0), query("q1"), query("q2")],
                       max_tracked_queries=1)  # q1 is forgotten unanswered
    again = only(step(state, query("q1", 1.0)), RoutingDecision)
    assert again.seq == 4
    assert only(step(state, query("q1", 1.0)), DeadLetter).reason == "duplicate_query"
    assert step(state, feedback("q1", "a", time=1.0)) == []  # refers to the newest q1
    assert only(step(state, feedback("q1", "a")), DeadLetter).reason == "duplicate_feedback"
    # An answered id is remembered for the last ANSWERED_REMEMBERED answers only.
    assert only(step(state, query("q1", 2.0)), DeadLetter).reason == "duplicate_query"
    state.answered.clear()  # as if ANSWERED_REMEMBERED other queries were answered since
    assert ANSWERED_REMEMBERED >= 1000
    assert only(step(state, query("q1", 3.0)), RoutingDecision).seq == 9


def test_verify_matches_reused_ids_by_seq() -> None:
    config = make_config(max_tracked_queries=1)
    log = [arrived("a"), stage(0), query("q1"), query("q2"), query("q1", 1.0)]
    _, outputs = run_log(log, **config.model_dump(include={"max_tracked_queries"}))
    journal = [(i, e.model_dump(mode="json")) for i, e in enumerate(log)]
    routing = [decision_row(o) for o in outputs if isinstance(o, RoutingDecision)]
    assert [r["query_id"] for r in routing] == ["q1", "q2", "q1"]
    deployments = [decision_row(o) for o in outputs if not isinstance(o, RoutingDecision)]
    report = verify(config, journal, routing, deployments)
    assert report.mismatches == [] and report.routing_checked == 3
    # Dropping the second use of q1 is caught, and said with its seq.
    report = verify(config, journal, routing[:2], deployments)
    assert report.mismatches == ["replay produced a routing decision at seq 4 that is not "
                                 "stored (query 'q1')"]

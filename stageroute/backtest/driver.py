"""The one loop that drives the engine over a workload: exogenous events, queries, feedback.

A workload says, for each query index ``t`` of a horizon ``T``:

* ``exogenous[t]``: events applied before query ``t`` (arrivals, expiries, stage boundaries,
  or anything a test wants to inject);
* ``query(t)``: the query event itself;
* ``outcome(t, model_id)``: the reward and cost the chosen model gets for query ``t``, or
  ``None`` for a missing outcome (no feedback ever comes);
* ``delay(t)``: queries between query ``t`` and its feedback.

Feedback due at ``t`` is applied after the exogenous events of ``t`` and before query ``t``,
in order of due index then query index; with ``feedback_batch = B`` feedback is only released
every ``B`` queries (what a gateway that reports in batches does).  After the last query every
outstanding feedback is applied.  Feedback depends on the model chosen, so a log of a run can
only be built by running the engine: this loop is what the backtest, the event-log builders of
the tests and the benchmarks share.

``drive`` yields one ``Step`` per query, in order, after the query has been applied;
``record(seq, event, outputs)`` sees every event applied, with its journal sequence number.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from schemas import Event, Feedback, Query, QueryFeatures, RoutingDecision
from stageroute.backtest.scenario import Scenario
from stageroute.backtest.table import RewardTable
from stageroute.engine import EngineState, Output, apply

Record = Callable[[int, Event, list[Output]], None]
"""Sees each applied event: ``(seq, event, outputs)``."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What drives the engine; see the module docstring."""

    horizon: int
    exogenous: Mapping[int, Sequence[Event]]
    query: Callable[[int], Query]
    outcome: Callable[[int, str], tuple[float, float] | None]
    delay: Callable[[int], int] = lambda t: 0
    feedback_batch: int = 1


@dataclass(frozen=True, slots=True)
class Step:
    """Query ``t``: its routing decision (None if it was dead-lettered) and its outcome."""

    t: int
    decision: RoutingDecision | None
    outcome: tuple[float, float] | None


def drive(state: EngineState, workload: Workload, record: Record | None = None,
          ) -> Iterator[Step]:
    """Run ``workload`` through the engine ``state`` (mutated in place); one step per query."""
    due: list[tuple[int, int, Feedback]] = []  # heap of (due index, query index, feedback)

    def push(event: Event) -> list[Output]:
        seq = state.seq
        _, outputs = apply(state, event)
        if record is not None:
            record(seq, event, outputs)
        return outputs

    exogenous, batch = workload.exogenous, workload.feedback_batch
    for t in range(workload.horizon):
        for event in exogenous.get(t, ()):
            push(event)
        if t % batch == 0:
            while due and due[0][0] <= t:
                push(heapq.heappop(due)[2])
        query = workload.query(t)
        decision = next((o for o in push(query) if isinstance(o, RoutingDecision)), None)
        outcome = None if decision is None else workload.outcome(t, decision.model_id)
        if decision is not None and outcome is not None:
            reward, cost = outcome
            ready = t + workload.delay(t)
            heapq.heappush(due, (ready, t, Feedback(
                query_id=query.query_id, model_id=decision.model_id, reward=reward, cost=cost,
                time=float(ready), domain=query.domain)))
        yield Step(t, decision, outcome)
    while due:
        push(heapq.heappop(due)[2])


@dataclass(frozen=True, slots=True)
class Stream:
    """A reward table replayed as a query stream: which rows, in what order, on what schedule.

    Query ``t`` is row ``rows[t]`` (id ``{prefix}q{t}``, task = the row's ``eval_name``), and
    its feedback is that row's score and cost for the chosen model, ``feedback_delay`` queries
    later; a blank score is a missing outcome.
    """

    rows: np.ndarray
    scenario: Scenario
    default_alpha: float
    #: Published price per model (USD per query) for arrivals that schedule none.
    prices: Mapping[str, float] | None = None
    feedback_delay: int = 0
    feedback_batch: int = 1
    domain: str = "default"
    query_prefix: str = ""


def table_workload(table: RewardTable, stream: Stream) -> Workload:
    """The workload of replaying ``table`` as ``stream``."""
    column = {m: j for j, m in enumerate(table.models)}
    scores, costs, tasks, rows = table.scores, table.costs, table.tasks, stream.rows
    domain, prefix, delay = stream.domain, stream.query_prefix, stream.feedback_delay
    exogenous = stream.scenario.events_before(stream.default_alpha, stream.prices)
    if domain != "default":
        exogenous = {t: [e.model_copy(update={"domain": domain}) for e in events]
                     for t, events in exogenous.items()}

    def query(t: int) -> Query:
        task = tasks[int(rows[t])]
        return Query(query_id=f"{prefix}q{t}", time=float(t), domain=domain,
                     features=QueryFeatures(task=task or None))

    def outcome(t: int, model_id: str) -> tuple[float, float] | None:
        row, j = int(rows[t]), column[model_id]
        reward = float(scores[row, j])
        if reward != reward:  # NaN: a missing outcome
            return None
        return reward, float(costs[row, j])

    return Workload(stream.scenario.horizon, exogenous, query, outcome,
                    delay=lambda t: delay, feedback_batch=stream.feedback_batch)


def iid_rows(n_rows: int, horizon: int, seed: int) -> np.ndarray:
    """Row indices drawn i.i.d. uniformly (with replacement) with the seed."""
    return np.random.default_rng(seed).integers(0, n_rows, horizon)

"""All or nothing: what ``apply`` restores when a handler raises midway.

Handlers change the state in place (for speed) and may call solvers and policies that can
raise on inputs the contract lets through (a solver's non-optimal status, say). ``capture``
takes, before an event is applied, what its handler may change: the scalar fields of
``EngineState``, its containers copied one level deep (the model registry, the deployed list
and ids, the counters), the budget ledger's values, the values of the model the event names,
and whether the event's query id was tracked. A query changes another model (the one it is
routed to: its count of queries awaiting feedback) only after everything that can fail has
been done. ``restore`` puts all of that back.
The tracked queries themselves are not copied (they are the large part of the state): a
handler adds or drops only the entry of its event's query id, and ``restore`` undoes exactly
that.

The fields are named one by one, not found by reflection: this runs before every event, and
a generic walk over the dataclass cost more than the query's routing itself. ``COVERED``
lists them; a test fails when ``EngineState`` gains a field that is not in it. A handler that
mutates another ``ModelStats`` than its event's, or another query's entry, must extend
``capture``.

The contextual book (``EngineState.context``, contextual policies only) is captured by what
the event may change in it (``_capture_book``): a feedback one (context, model) cell and its
model's prior; a query that will neither re-plan nor deploy (the usual case) the context
counts and the count since the plan; anything else (a query that re-plans or deploys, a model
or stage event) a deep copy, which costs about as much as the plan it may redo and comes at
most once per plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from schemas import Event, Feedback, Query
from stageroute.engine.context import NO_CONTEXT, ContextBook
from stageroute.engine.state import EngineState
from stageroute.policies import ModelStats
from stageroute.policies.contextual import Cell

#: The fields of ``EngineState`` that ``capture`` saves and ``restore`` puts back.
COVERED = frozenset({"config", "policy", "seq", "stage", "clock", "ledger", "spent", "models",
                     "deployed", "deployed_ids", "route_cache", "counters"})
#: The fields it leaves alone: handlers touch only the event's own entry of these.
PER_QUERY = frozenset({"queries", "answered"})
#: The contextual book, captured by what the event may change in it (``_capture_book``).
CONTEXT_BOOK = frozenset({"context"})

_model_values = attrgetter(*(f.name for f in fields(ModelStats)))
_MODEL_FIELDS = tuple(f.name for f in fields(ModelStats))
_CELL_FIELDS = tuple(f.name for f in fields(Cell))
_cell_values = attrgetter(*_CELL_FIELDS)


@dataclass(slots=True)
class Undo:
    state: tuple[Any, ...]
    ledger: tuple[int, float]
    model: tuple[ModelStats, tuple[Any, ...]] | None
    query_id: str | None
    query: Any
    answered: bool
    #: Puts the contextual book back and returns it (None: no book).
    book: Callable[[], ContextBook] | None


def capture(state: EngineState, event: Event) -> Undo:
    ledger = state.ledger
    saved = (state.config, state.policy, state.seq, state.stage, state.clock, ledger,
             state.spent, state.models.copy(), state.deployed.copy(), state.deployed_ids.copy(),
             state.route_cache, state.counters.copy())
    # An event's fields are in its __dict__ (pydantic); getattr of an absent one would raise.
    named = event.__dict__
    model_id = named.get("model_id")
    stats = state.models.get(model_id) if model_id is not None else None
    model = None if stats is None else (stats, _model_values(stats))
    query_id = named.get("query_id")
    book = state.context
    return Undo(saved, (ledger.routed, ledger.committed), model, query_id,
                state.queries.get(query_id) if query_id else None,
                query_id in state.answered if query_id else False,
                None if book is None else _capture_book(state, book, event))


def _capture_book(state: EngineState, book: ContextBook, event: Event,
                  ) -> Callable[[], ContextBook]:
    """What ``event`` may change in ``book`` (see the module docstring), as a function that
    puts it back."""
    if isinstance(event, Feedback):
        # ``context.observe``: one cell (created if absent) and its model's prior (likewise).
        record = state.queries.get(event.query_id)
        if record is None or record.context == NO_CONTEXT:
            return lambda: book  # the book is not touched
        row, model_id = book.cells[record.context], event.model_id
        cell, prior = row.get(model_id), book.priors.get(model_id)
        saved: tuple[Any, ...] = () if cell is None else _cell_values(cell)

        def undo_feedback() -> ContextBook:
            if cell is None:
                row.pop(model_id, None)
            else:
                for name, value in zip(_CELL_FIELDS, saved):
                    setattr(cell, name, value)  # in place: the plan's rows point at the cell
            if prior is None:
                book.priors.pop(model_id, None)
            if book.plan is not None:
                book.plan.sync(record.context, model_id)
            return book

        return undo_feedback
    if (isinstance(event, Query) and state.deployed and book.plan is not None
            and not book.stale() and not book.is_new(event.features)):
        # No re-plan and no deployment: ``note`` and ``route_inputs`` change two counts.
        counts, since_plan = book.counts.copy(), book.since_plan

        def undo_query() -> ContextBook:
            book.counts, book.since_plan = counts, since_plan
            return book

        return undo_query
    copy = book.clone()
    return lambda: copy


def restore(state: EngineState, undo: Undo) -> None:
    (state.config, state.policy, state.seq, state.stage, state.clock, state.ledger,
     state.spent, state.models, state.deployed, state.deployed_ids, state.route_cache,
     state.counters) = undo.state
    state.ledger.routed, state.ledger.committed = undo.ledger
    if undo.book is not None:
        state.context = undo.book()
    if undo.model is not None:
        stats, values = undo.model
        for name, value in zip(_MODEL_FIELDS, values):
            setattr(stats, name, value)
    query_id = undo.query_id
    if query_id is None:
        return
    if undo.query is None:
        state.queries.pop(query_id, None)
    elif state.queries.get(query_id) is not undo.query:
        state.queries[query_id] = undo.query
    if not undo.answered:
        state.answered.pop(query_id, None)

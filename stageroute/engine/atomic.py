"""All or nothing: what ``apply`` restores when a handler raises midway.

Handlers change the state in place (for speed) and may call solvers and policies that can
raise on inputs the contract lets through (a solver's non-optimal status, say). ``capture``
takes, before an event is applied, what its handler may change: every field of ``EngineState``
(the containers among them copied one level deep: the model registry, the deployed list, the
counters, ...; the budget ledger copied), the values of the model the event names, and whether
the event's query id was tracked.  A query changes another model (the one it is routed to:
its count of queries awaiting feedback) only after everything that can fail has been done.
``restore`` puts all of that back.
The tracked queries themselves are not copied (they are the large part of the state): a
handler adds or drops only the entry of its event's query id, and ``restore`` undoes exactly
that. Cost: a few dict copies of the size of the model registry per event.

The contextual book (``EngineState.context``, contextual policies only) is captured by what
the event may change in it (``_capture_book``): a feedback one (context, model) cell and its
prior; a query that will not re-plan (the usual case) the context counts and the count since
the plan; anything else (a query that re-plans or deploys, a model or stage event) a deep copy,
which costs about one plan's worth of work and comes at most once per plan.

A new field of ``EngineState`` is covered as long as it is a value or a dict/list/set of
values; a handler that mutates another ``ModelStats`` than its event's, or another query's
entry, must extend ``capture``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from schemas import Event, Feedback, Query
from stageroute.engine.budget import Ledger
from stageroute.engine.context import NO_CONTEXT, ContextBook
from stageroute.engine.state import EngineState
from stageroute.policies import ModelStats
from stageroute.policies.contextual import Cell

_SKIP = frozenset({"queries", "answered", "context"})
_MODEL_FIELDS = tuple(f.name for f in fields(ModelStats))
_CELL_FIELDS = tuple(f.name for f in fields(Cell))


@dataclass(slots=True)
class Undo:
    values: dict[str, Any]
    model: tuple[ModelStats, tuple[Any, ...]] | None
    query_id: str | None
    query: Any
    answered: bool
    #: Puts the contextual book back and returns it (None: no book).
    book: Callable[[], ContextBook] | None


def capture(state: EngineState, event: Event) -> Undo:
    values: dict[str, Any] = {}
    for f in fields(state):
        if f.name in _SKIP:
            continue
        value = getattr(state, f.name)
        if isinstance(value, OrderedDict):
            value = OrderedDict(value)
        elif isinstance(value, Ledger):
            value = replace(value)
        elif isinstance(value, dict | list | set):
            value = type(value)(value)
        values[f.name] = value
    model_id = getattr(event, "model_id", None)
    stats = state.models.get(model_id) if model_id is not None else None
    model = None if stats is None else (stats, tuple(getattr(stats, n) for n in _MODEL_FIELDS))
    query_id = getattr(event, "query_id", None)
    book = state.context
    return Undo(values, model, query_id, state.queries.get(query_id) if query_id else None,
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
        saved = None if cell is None else tuple(getattr(cell, n) for n in _CELL_FIELDS)

        def undo_feedback() -> ContextBook:
            if cell is None:
                row.pop(model_id, None)
            else:
                assert saved is not None
                for name, value in zip(_CELL_FIELDS, saved):
                    setattr(cell, name, value)  # in place: the plan's rows point at the cell
            if prior is None:
                book.priors.pop(model_id, None)
            return book

        return undo_feedback
    if (isinstance(event, Query) and state.deployed and book.plan is not None
            and not book.stale() and not book.is_new(event.features)):
        # No re-plan and no deployment: ``note`` and ``route_inputs`` change two counts.
        counts, since_plan = list(book.counts), book.since_plan

        def undo_query() -> ContextBook:
            book.counts, book.since_plan = counts, since_plan
            return book

        return undo_query
    copy = book.clone()
    return lambda: copy


def restore(state: EngineState, undo: Undo) -> None:
    for name, value in undo.values.items():
        setattr(state, name, value)
    if undo.model is not None:
        stats, saved = undo.model
        for name, value in zip(_MODEL_FIELDS, saved):
            setattr(stats, name, value)
    if undo.book is not None:
        state.context = undo.book()
    query_id = undo.query_id
    if query_id is None:
        return
    if undo.query is None:
        state.queries.pop(query_id, None)
    elif state.queries.get(query_id) is not undo.query:
        state.queries[query_id] = undo.query
    if not undo.answered:
        state.answered.pop(query_id, None)

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

The contextual book (``EngineState.context``, contextual policies only) keeps a journal of
what a query or a feedback changes in it (``ContextBook.begin``/``rollback``): the count of the
query's context, the (context, model) cell a feedback updates and whether its model's prior
was new, and a deep copy taken just before the first structural change (a new context, a
re-plan, a deployment), which costs about as much as the plan it precedes and comes at most
once per plan.  A model or stage event takes the deep copy up front.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from schemas import Event, Feedback, Query
from stageroute.engine.context import ContextBook
from stageroute.engine.state import EngineState
from stageroute.policies import ModelStats

#: The fields of ``EngineState`` that ``capture`` saves and ``restore`` puts back.
COVERED = frozenset({"config", "policy", "seq", "stage", "clock", "ledger", "spent", "models",
                     "deployed", "deployed_ids", "route_cache", "counters"})
#: The fields it leaves alone: handlers touch only the event's own entry of these.
PER_QUERY = frozenset({"queries", "answered"})
#: The contextual book, captured by what the event may change in it (``_capture_book``).
CONTEXT_BOOK = frozenset({"context"})

_model_values = attrgetter(*(f.name for f in fields(ModelStats)))
_MODEL_FIELDS = tuple(f.name for f in fields(ModelStats))


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
                None if book is None else _capture_book(book, event))


def _capture_book(book: ContextBook, event: Event) -> Callable[[], ContextBook]:
    """What ``event`` may change in ``book`` (see the module docstring), as a function that
    puts it back."""
    if isinstance(event, (Query, Feedback)):
        book.begin(journal=True)
        return book.rollback
    copy = book.clone()  # the journal is off: ``apply`` ends it with every event
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

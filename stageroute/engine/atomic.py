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

A new field of ``EngineState`` is covered as long as it is a value or a dict/list/set of
values; a handler that mutates another ``ModelStats`` than its event's, or another query's
entry, must extend ``capture``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import Any

from schemas import Event
from stageroute.engine.budget import Ledger
from stageroute.engine.state import EngineState
from stageroute.policies import ModelStats

_SKIP = frozenset({"queries", "answered"})
_STATE_FIELDS = tuple(f.name for f in fields(EngineState) if f.name not in _SKIP)
_MODEL_FIELDS = tuple(f.name for f in fields(ModelStats))
_model_values = attrgetter(*_MODEL_FIELDS)
# One level deep, by exact type (a dispatch on the type is the fast path: this runs per event).
_COPY: dict[type, Callable[[Any], Any]] = {
    dict: dict.copy, list: list.copy, set: set.copy, OrderedDict: OrderedDict.copy,
    Ledger: replace}


@dataclass(slots=True)
class Undo:
    values: dict[str, Any]
    model: tuple[ModelStats, tuple[Any, ...]] | None
    query_id: str | None
    query: Any
    answered: bool


def capture(state: EngineState, event: Event) -> Undo:
    values: dict[str, Any] = {}
    for name in _STATE_FIELDS:
        value = getattr(state, name)
        copy = _COPY.get(type(value))
        if copy is not None:
            value = copy(value)
        elif isinstance(value, dict | list | set):  # a subclass: slower, still one level
            value = type(value)(value)
        values[name] = value
    model_id = getattr(event, "model_id", None)
    stats = state.models.get(model_id) if model_id is not None else None
    model = None if stats is None else (stats, _model_values(stats))
    query_id = getattr(event, "query_id", None)
    return Undo(values, model, query_id, state.queries.get(query_id) if query_id else None,
                query_id in state.answered if query_id else False)


def restore(state: EngineState, undo: Undo) -> None:
    for name, value in undo.values.items():
        setattr(state, name, value)
    if undo.model is not None:
        stats, saved = undo.model
        for name, value in zip(_MODEL_FIELDS, saved):
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

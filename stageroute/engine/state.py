"""Engine state: the model registry with statistics, the stage, the deployed set, the budget
ledger, the queries awaiting feedback, the recently answered ones, and the cached routing
distribution.  Snapshots are JSON (exact floats).

A snapshot holds what is needed to continue, not every query ever answered: the queries still
awaiting feedback (bounded by ``max_tracked_queries`` and ``query_ttl``) and the ids of the last
``ANSWERED_REMEMBERED`` answered ones (to tell a repeated query or feedback from a new one)."""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from stageroute.engine.budget import Ledger
from stageroute.engine.config import ENGINE_VERSION, EngineConfig
from stageroute.engine.context import ContextBook
from stageroute.policies import ModelStats, Policy, Scores, make_policy
from stageroute.policies.contextual import ContextualMixin

SNAPSHOT_VERSION = 3
"""3: contextual state (``context``, and each tracked query's context); 2 (no context) is read
as well."""

ANSWERED_REMEMBERED = 10_000
"""Answered query ids remembered: a query or feedback repeating one of them is a duplicate; an
id answered longer ago than that may be used again (a new query, see ``engine.core``)."""


@dataclass(slots=True)
class RouteCache:
    """RouteOPT's answer for the current deployed set and statistics (cacheable policies only)."""

    scores: Scores
    alpha: list[float]
    budget: float
    p: list[float]
    status: str


@dataclass(slots=True)
class QueryRecord:
    """A routed query awaiting its feedback."""

    model_id: str
    time: float
    #: The cost estimate committed to the budget ledger when the query was routed.
    estimate: float = 0.0
    #: The query's context index (``stageroute.engine.context``; 0: none).
    context: int = 0


@dataclass(slots=True)
class EngineState:
    """Mutable state owned by one ``apply`` loop (one routing domain, one writer)."""

    config: EngineConfig
    policy: Policy
    seq: int = 0
    stage: int = -1
    clock: float = 0.0
    ledger: Ledger = field(default_factory=Ledger)
    #: Realised cost of all feedback so far (USD).
    spent: float = 0.0
    models: dict[str, ModelStats] = field(default_factory=dict)
    deployed: list[ModelStats] = field(default_factory=list)
    deployed_ids: set[str] = field(default_factory=set)
    queries: OrderedDict[str, QueryRecord] = field(default_factory=OrderedDict)
    answered: OrderedDict[str, None] = field(default_factory=OrderedDict)
    route_cache: RouteCache | None = None
    #: Contextual policies only: contexts, (context, model) statistics and the plan.
    context: ContextBook | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("routed", "feedback", "deployments", "dead_letters", "forgotten_queries",
         "budget_infeasible"), 0))

    def set_deployed(self, models: list[ModelStats]) -> None:
        self.deployed = models
        self.deployed_ids = {m.model_id for m in models}
        self.route_cache = None


def initial_state(config: EngineConfig) -> EngineState:
    if config.engine_version != ENGINE_VERSION:
        raise ValueError(f"engine version {config.engine_version} decisions cannot be made by "
                         f"engine version {ENGINE_VERSION}")
    policy = make_policy(config.policy, config.seed, config.policy_params)
    book = ContextBook(policy) if isinstance(policy, ContextualMixin) else None
    return EngineState(config=config, policy=policy, context=book)


def snapshot(state: EngineState) -> bytes:
    """The whole state as compressed JSON; ``restore(snapshot(s))`` continues exactly as ``s``."""
    cache = state.route_cache
    doc: dict[str, Any] = {
        "version": SNAPSHOT_VERSION,
        "config": state.config.model_dump(mode="json"),
        "seq": state.seq,
        "stage": state.stage,
        "clock": state.clock,
        "spent": state.spent,
        "ledger": [state.ledger.routed, state.ledger.committed],
        "models": [m.to_json() for m in state.models.values()],
        "deployed": [m.model_id for m in state.deployed],
        "queries": [[q, r.model_id, r.time, r.estimate, r.context]
                    for q, r in state.queries.items()],
        "answered": list(state.answered),
        "context": None if state.context is None else state.context.to_json(),
        "route_cache": None if cache is None else [
            cache.scores.reward, cache.scores.cost, cache.scores.risk, cache.alpha, cache.budget,
            cache.p, cache.status],
        "counters": state.counters,
    }
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 1)


def restore(data: bytes) -> EngineState:
    doc = json.loads(zlib.decompress(data))
    if doc.get("version") not in (2, SNAPSHOT_VERSION):
        raise ValueError(f"snapshot version {doc.get('version')!r} is not {SNAPSHOT_VERSION}")
    state = initial_state(EngineConfig.model_validate(doc["config"]))
    state.seq, state.stage, state.clock = doc["seq"], doc["stage"], doc["clock"]
    state.spent = doc["spent"]
    state.ledger = Ledger(*doc["ledger"])
    state.models = {row[0]: ModelStats.from_json(row) for row in doc["models"]}
    state.set_deployed([state.models[m] for m in doc["deployed"]])
    # Version 2 rows have no context (0: none).
    state.queries = OrderedDict((row[0], QueryRecord(*row[1:])) for row in doc["queries"])
    state.answered = OrderedDict.fromkeys(doc["answered"])
    if doc["route_cache"] is not None:
        reward, cost, risk, alpha, budget, p, status = doc["route_cache"]
        state.route_cache = RouteCache(Scores(reward, cost, True, risk), alpha, budget, p, status)
    if doc.get("context") is not None:
        assert isinstance(state.policy, ContextualMixin)
        state.context = ContextBook.from_json(state.policy, doc["context"])
        if state.context.plan is not None and state.context.plan.models != [
                m.model_id for m in state.deployed]:
            raise ValueError("snapshot: the contextual plan is not for the deployed set")
    state.counters = doc["counters"]
    return state

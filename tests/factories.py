"""Factories for engine, policy and scenario tests: configs, events, and logs built by running
the engine (so that feedback can name the model a query was actually routed to).

Everything here is pure and deterministic; ``log_digest`` is also what the fresh-process
determinism test runs in a subprocess.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from schemas import (
    DeadLetter,
    DeploymentDecision,
    Event,
    Feedback,
    ModelArrived,
    ModelExpired,
    Query,
    QueryFeatures,
    RoutingDecision,
    StageBoundary,
    decode_decision,
    encode,
)
from solvers import deploy_opt, route_opt
from solvers.route_opt import solve_lists
from stageroute.backtest.driver import Workload, drive
from stageroute.engine import EngineConfig, EngineState, Output, apply, initial_state
from stageroute.policies import POLICIES, sample_index, uniform
from stageroute.policies.contextual import ContextualMixin
from stageroute.verify import rederive_deployment

BASE_CONFIG: dict[str, Any] = {"budget": 0.5, "cost_ceiling": 1.0, "m_max": 2, "seed": 7}
"""The config every test starts from; tests override only what they are about."""

# True (reward, cost) means of the scripted log's models, and the oracle's parameters for them.
SCRIPTED_MEANS: dict[str, tuple[float, float]] = {
    "m0": (0.30, 0.05), "m1": (0.80, 0.60), "m2": (0.60, 0.20), "m3": (0.45, 0.10),
    "m4": (0.90, 0.40),
}

#: Tasks of the scripted log's queries, in turn (None: a query without features).
SCRIPTED_TASKS: tuple[str | None, ...] = ("easy", "hard", None)
#: True (reward, cost) means per scripted task and model: "easy" is easier and cheaper.
SCRIPTED_CONTEXT_MEANS: dict[str, dict[str, tuple[float, float]]] = {
    "easy": {m: (min(1.0, r + 0.15), c * 0.8) for m, (r, c) in SCRIPTED_MEANS.items()},
    "hard": {m: (max(0.0, r - 0.15), c * 1.2) for m, (r, c) in SCRIPTED_MEANS.items()},
}
ORACLES: dict[str, dict[str, Any]] = {
    "oracle": {"means": {m: list(rc) for m, rc in SCRIPTED_MEANS.items()}},
    "contextual_oracle": {
        "means": {m: list(rc) for m, rc in SCRIPTED_MEANS.items()},
        "context_means": {x: {m: list(rc) for m, rc in row.items()}
                          for x, row in SCRIPTED_CONTEXT_MEANS.items()}},
}


def make_config(**overrides: Any) -> EngineConfig:
    if overrides.get("policy") in ORACLES and "policy_params" not in overrides:
        overrides["policy_params"] = ORACLES[overrides["policy"]]
    return EngineConfig(**{**BASE_CONFIG, **overrides})


def new_state(**overrides: Any) -> EngineState:
    return initial_state(make_config(**overrides))


# --- events -----------------------------------------------------------------------------------


def arrived(model_id: str, time: float = 0.0, alpha: float = 1.0, **fields: Any) -> ModelArrived:
    return ModelArrived(model_id=model_id, time=time, alpha=alpha, **fields)


def arrivals(*model_ids: str, time: float = 0.0, alpha: float = 1.0) -> list[ModelArrived]:
    return [arrived(m, time=time, alpha=alpha) for m in model_ids]


def expired(model_id: str, time: float = 0.0) -> ModelExpired:
    return ModelExpired(model_id=model_id, time=time)


def query(query_id: str, time: float = 0.0, task: str | None = None) -> Query:
    return Query(query_id=query_id, time=time,
                 features=None if task is None else QueryFeatures(task=task))


def queries(*query_ids: str, time: float = 0.0) -> list[Query]:
    return [query(q, time=time) for q in query_ids]


def feedback(query_id: str, model_id: str, reward: float = 1.0, cost: float = 0.1,
             time: float = 0.0) -> Feedback:
    return Feedback(query_id=query_id, model_id=model_id, reward=reward, cost=cost, time=time)


def answer(decision: RoutingDecision, reward: float = 1.0, cost: float = 0.1,
           time: float | None = None) -> Feedback:
    """Feedback for a routing decision, naming the model it chose."""
    return feedback(decision.query_id, decision.model_id, reward, cost,
                    decision.time if time is None else time)


def stage(k: int, time: float = 0.0) -> StageBoundary:
    return StageBoundary(stage=k, time=time)


# --- running ----------------------------------------------------------------------------------


def step(state: EngineState, event: Event) -> list[Output]:
    """Apply one event to ``state`` (in place) and return its outputs."""
    _, outputs = apply(state, event)
    return outputs


def run_log(events: Iterable[Event], state: EngineState | None = None,
            **config_overrides: Any) -> tuple[EngineState, list[Output]]:
    """Apply ``events`` to ``state`` (a fresh one from ``make_config(**config_overrides)`` by
    default); returns the state and all outputs in order."""
    if state is None:
        state = new_state(**config_overrides)
    outputs: list[Output] = []
    for event in events:
        outputs.extend(step(state, event))
    return state, outputs


def encoded(outputs: Sequence[Output]) -> bytes:
    return b"\n".join(encode(out) for out in outputs)


def routings(outputs: Iterable[Output]) -> list[RoutingDecision]:
    return [out for out in outputs if isinstance(out, RoutingDecision)]


def deployments(outputs: Iterable[Output]) -> list[DeploymentDecision]:
    return [out for out in outputs if isinstance(out, DeploymentDecision)]


def dead_letters(outputs: Iterable[Output]) -> list[DeadLetter]:
    return [out for out in outputs if isinstance(out, DeadLetter)]


def only(outputs: Sequence[Output], kind: type[Any]) -> Any:
    """The single output of ``outputs``, asserting it is a ``kind``."""
    assert len(outputs) == 1, outputs
    assert isinstance(outputs[0], kind), outputs[0]
    return outputs[0]


def state_view(state: EngineState) -> dict[str, Any]:
    """Everything the engine state holds, as plain comparable values (independent of the
    snapshot format, so it can also check ``snapshot``/``restore``)."""
    cache = state.route_cache
    return {
        "config": state.config.model_dump(),
        "seq": state.seq,
        "stage": state.stage,
        "clock": state.clock,
        "spent": state.spent,
        "models": {m: stats.to_json() for m, stats in state.models.items()},
        "model_order": list(state.models),
        "deployed": [m.model_id for m in state.deployed],
        "deployed_ids": sorted(state.deployed_ids),
        "queries": [(q, r.model_id, r.time) for q, r in state.queries.items()],
        "answered": list(state.answered),
        "route_cache": None if cache is None else (
            cache.scores.reward, cache.scores.cost, cache.scores.cacheable, cache.alpha,
            cache.budget, cache.p, cache.status),
        "counters": dict(state.counters),
        "context": None if state.context is None else state.context.to_json(),
        "query_contexts": [r.context for r in state.queries.values()],
    }


# --- logs built by running the engine -----------------------------------------------------------


class LogBuilder:
    """Builds an event log while applying it, so feedback can name the routed model.

    ``pending`` holds ``(query_id, model_id)`` of routed queries not yet answered; answering
    any of them (not only the oldest) gives out-of-order feedback, never answering some gives
    feedback that never comes.  The builder's own engine run is a plain one-pass run.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.state = initial_state(config)
        self.events: list[Event] = []
        self.outputs: list[Output] = []
        self.time = 0.0
        self.models: list[str] = []
        self.pending: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str]] = []
        self.n_queries = 0
        self.retired: set[str] = set()

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying log
        lines = [repr(self.config), *(repr(event) for event in self.events)]
        return "LogBuilder(\n  " + "\n  ".join(lines) + "\n)"

    @property
    def live(self) -> list[str]:
        return [m for m in self.models if m not in self.retired]

    def add(self, event: Event) -> list[Output]:
        self.events.append(event)
        out = step(self.state, event)
        self.outputs.extend(out)
        self.pending.extend((o.query_id, o.model_id) for o in routings(out))
        return out

    def tick(self, dt: float) -> None:
        self.time += dt

    def arrive(self, alpha: float = 1.0, cost_min: float | None = None,
               cost_max: float | None = None) -> str:
        model_id = f"m{len(self.models)}"
        self.models.append(model_id)
        self.add(ModelArrived(model_id=model_id, time=self.time, alpha=alpha,
                              cost_min=cost_min, cost_max=cost_max))
        return model_id

    def expire(self, model_id: str) -> None:
        self.retired.add(model_id)
        self.add(expired(model_id, self.time))

    def next_stage(self) -> None:
        self.add(stage(max(self.state.stage, -1) + 1, self.time))

    def stale_stage(self) -> None:
        self.add(stage(max(self.state.stage, 0), self.time))

    def query(self) -> RoutingDecision | None:
        query_id = f"q{self.n_queries}"
        task = (None, "a", "b", "c")[self.n_queries % 4]  # contexts for contextual policies
        self.n_queries += 1
        decided = routings(self.add(query(query_id, self.time, task)))
        return decided[0] if decided else None

    def answer(self, index: int, reward: float, cost: float) -> None:
        """Feedback for the ``index``-th pending query (modulo their number), if any."""
        if not self.pending:
            return
        query_id, model_id = self.pending.pop(index % len(self.pending))
        self.answered.append((query_id, model_id))
        self.add(feedback(query_id, model_id, reward, cost, self.time))

    def bad_feedback(self, kind: str, index: int) -> None:
        """Feedback the engine must dead-letter: ``unknown`` query, ``mismatch``ed model,
        ``duplicate`` of an answered query (each falls back to ``unknown`` when impossible)."""
        if kind == "mismatch" and self.pending:
            query_id, model_id = self.pending[index % len(self.pending)]
            self.add(feedback(query_id, model_id + "-other", time=self.time))
        elif kind == "duplicate" and self.answered:
            query_id, model_id = self.answered[index % len(self.answered)]
            self.add(feedback(query_id, model_id, time=self.time))
        else:
            self.add(feedback(f"unknown-{index}", "m0", time=self.time))

    def duplicate_query(self, index: int) -> None:
        query_id = f"q{index % self.n_queries}" if self.n_queries else "q0"
        self.add(query(query_id, self.time))


def scripted_log(config: EngineConfig, n_queries: int = 120, rng_seed: int = 0) -> list[Event]:
    """A realistic log: models with price ranges, stages every 30 queries, a mid-run expiry
    and arrival, feedback delayed by 0-10 queries (so out of order) or never, bad events.
    Built by the engine driver, as every log whose feedback names the routed model is."""
    rng = random.Random(rng_seed)  # the test's own generator, not the engine's
    exogenous: dict[int, list[Event]] = defaultdict(list)
    for model_id, (_, cost) in list(SCRIPTED_MEANS.items())[:4]:
        exogenous[0].append(arrived(model_id, alpha=0.6, cost_min=cost / 2, cost_max=2 * cost))
    for t in range(0, n_queries, 30):
        exogenous[t].append(stage(t // 30, float(t)))
    exogenous[20].append(feedback("unknown-20", "m0", time=20.0))
    exogenous[40].append(query("q3", 40.0))  # a duplicate query id
    exogenous[50].append(expired("m1", 50.0))
    exogenous[60].append(arrived("m4", 60.0, alpha=0.6, cost_min=0.2, cost_max=0.8))
    delays: dict[int, int] = {}

    def outcome(t: int, model_id: str) -> tuple[float, float] | None:
        if rng.random() < 0.2:
            return None  # feedback that never comes
        mean_reward, mean_cost = SCRIPTED_MEANS[model_id]
        delays[t] = rng.randint(0, 10)
        return float(rng.random() < mean_reward), mean_cost * rng.uniform(0.5, 1.5)

    # Tasks leave every non-contextual decision as it was; the contextual policies see them.
    workload = Workload(n_queries, exogenous,
                        lambda t: query(f"q{t}", float(t), SCRIPTED_TASKS[t % 3]), outcome,
                        delay=delays.__getitem__)
    events: list[Event] = []
    for _ in drive(initial_state(config), workload, lambda seq, e, out: events.append(e)):
        pass
    return events


def log_digest(policy: str = "stageroute", seed: int = 11) -> str:
    """SHA-256 of the encoded outputs of the scripted log run on a fresh state."""
    config = make_config(policy=policy, seed=seed, m_max=3)
    _, outputs = run_log(scripted_log(config), state=initial_state(config))
    return hashlib.sha256(encoded(outputs)).hexdigest()


# --- decision invariants ----------------------------------------------------------------------


def check_routing(decision: RoutingDecision, seed: int) -> None:
    """A routing decision is RouteOPT of its recorded inputs, bit for bit, and its model is the
    inverse-CDF sample of ``p`` at the per-query draw keyed by (seed, query id)."""
    p, status = solve_lists(decision.mu_u, decision.c_l, decision.alpha, decision.budget)
    assert decision.p == p
    assert decision.status == status
    assert decision.p == route_opt(decision.mu_u, decision.c_l, decision.alpha,
                                   decision.budget).p.tolist()
    assert decision.draw == uniform(seed, decision.query_id)
    assert decision.model_id == decision.deployed[sample_index(decision.p, decision.draw)]


def check_deployment(decision: DeploymentDecision) -> None:
    """A deployment decision's selection is DeployOPT's on its recorded inputs (for a
    contextual policy: what ``audit verify`` checks of its row)."""
    if issubclass(POLICIES[decision.policy], ContextualMixin):
        assert rederive_deployment(decision.model_dump()) == []
        return
    solution = deploy_opt(decision.mu_u, decision.c_l, decision.alpha, decision.budget,
                          decision.m_max)
    assert decision.selected == [decision.candidates[i] for i in solution.selected]
    assert decision.d == solution.d.tolist()
    assert decision.status == solution.status


def check_outputs(outputs: Iterable[Output], seed: int) -> None:
    """Every output is valid on the wire and every decision reproducible from its record."""
    for out in outputs:
        wire = encode(out)
        assert encode(decode_decision(wire)) == wire
        if isinstance(out, RoutingDecision):
            check_routing(out, seed)
        elif isinstance(out, DeploymentDecision):
            check_deployment(out)

"""The event-sourced StageRoute engine: ``apply(state, event) -> (state, outputs)``.

No I/O, no clock, no global randomness: decisions are a function of (config, ordered events,
seed).  ``apply`` takes ownership of ``state`` and returns it updated (mutated in place, for
speed); a rejected event leaves it untouched except for the sequence number and a dead letter.

Per event (``seq`` is its position in the journal):

* model arrived: joins the candidate pool (a retired model may return, keeping its
  statistics); deployed only at the next stage start (a policy with no stage commitment
  deploys it at once).
* model expired: leaves the pool; if deployed it is never routed to again and the next query's
  RouteOPT is solved over the rest (the route cache is dropped); if nothing deployed is left,
  DeployOPT runs at once (reason ``deployed_set_empty``).
* stage boundary ``k > stage``: DeployOPT over the live candidates (reason ``stage_boundary``).
* query: RouteOPT over the deployed set, a draw keyed by (seed, query id), the model sampled
  from ``p``; remembered until feedback (bounded: see ``EngineConfig.max_tracked_queries`` and
  ``query_ttl``).  Before any deployment, DeployOPT runs first (reason ``initial``).
* feedback: Welford update of the routed model's statistics (also after it expired), whenever
  it comes and in any order; its realised cost replaces the estimate committed to the budget
  ledger when the query was routed (``stageroute.engine.budget``).  The query is then
  forgotten; its id stays among the last ``ANSWERED_REMEMBERED`` answered ones.

Query ids: an id the engine remembers (awaiting feedback, or recently answered) cannot be used
again (``duplicate_query``).  An id it has forgotten (answered long ago, or dropped by
``max_tracked_queries``/``query_ttl``) may be: that is a new query with a decision of its own,
stored under its own ``seq`` (the audit trail keys decisions by ``seq``), and feedback then
refers to the newest one.

``apply`` is atomic: a handler that raises anything but a rejection (a solver failing on
extreme inputs, say) leaves the state exactly as it was before the event (``engine.atomic``)
and the event becomes a dead letter ``internal_error`` with the exception as its detail.

RouteOPT gets the ledger's plan: caps (0 for models the ledger cannot afford this query) and
budget; both are recorded on the decision (``alpha``, ``budget``).  A cacheable policy's scores
are reused until the statistics change, and its RouteOPT answer while the plan is unchanged
(``cached=True`` on the decision).

A contextual policy (``contextual``, ``contextual_greedy``, ``contextual_oracle``) routes each
query with its context's scores, caps and planned spend from a plan over contexts, deploys by
ContextDeployOPT, and updates the (context, model) statistics on feedback besides the pooled
ones (``stageroute.engine.context``: the program and its guarantees); its decisions are not
cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from schemas import (
    DeadLetter,
    DeadLetterReason,
    DeploymentDecision,
    Event,
    Feedback,
    ModelArrived,
    ModelExpired,
    Query,
    RoutingDecision,
    StageBoundary,
    encode,
    trusted,
)
from solvers import BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE, deploy_opt
from solvers.route_opt import solve_lists
from stageroute.engine import atomic, context
from stageroute.engine.budget import plan
from stageroute.engine.state import ANSWERED_REMEMBERED, EngineState, QueryRecord, RouteCache
from stageroute.policies import ModelStats, Scores, sample_index, uniform

Output = RoutingDecision | DeploymentDecision | DeadLetter
DeployReason = Literal["stage_boundary", "initial", "deployed_set_empty", "model_arrived"]


class Rejected(Exception):
    """Raised by a handler before it changes anything; becomes a dead letter."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def apply(state: EngineState, event: Event) -> tuple[EngineState, list[Output]]:
    """Apply one validated event; returns the state and the decisions it produced."""
    undo = atomic.capture(state, event)
    seq = state.seq
    state.seq = seq + 1
    outputs: list[Output] = []
    try:
        if isinstance(event, Query):
            _on_query(state, event, seq, outputs)
        elif isinstance(event, Feedback):
            _on_feedback(state, event)
        elif isinstance(event, ModelArrived):
            _on_arrival(state, event, seq, outputs)
        elif isinstance(event, ModelExpired):
            _on_expiry(state, event, seq, outputs)
        else:
            _on_stage(state, event, seq, outputs)
    except Rejected as rejected:
        _end_journal(state)
        state.counters["dead_letters"] += 1
        outputs.append(DeadLetter(domain=state.config.domain, seq=seq, reason=rejected.reason,
                                  detail=rejected.detail, payload=encode(event).decode()))
        return state, outputs
    except Exception as exc:  # anything else: undo the event, keep the engine going
        atomic.restore(state, undo)
        state.seq = seq + 1
        state.counters["dead_letters"] += 1
        return state, [DeadLetter(domain=state.config.domain, seq=seq,
                                  reason=DeadLetterReason.INTERNAL_ERROR,
                                  detail=f"{type(exc).__name__}: {exc}",
                                  payload=encode(event).decode())]
    _end_journal(state)
    # Only an applied event moves the clock: a rejected one (say a far-future time) must not
    # age out the queries awaiting feedback.
    if event.time > state.clock:
        state.clock = event.time
        if state.config.query_ttl is not None:
            _forget_old_queries(state)
    return state, outputs


def _end_journal(state: EngineState) -> None:
    """The event is done: the contextual book lets go of its undo journal (a copy of the whole
    book after a re-plan) rather than keep it until the next event."""
    if state.context is not None:
        state.context.begin(False)


def fold(state: EngineState, events: Iterable[Event]) -> tuple[EngineState, list[Output]]:
    """Apply events in order; replay and backtest are this loop."""
    outputs: list[Output] = []
    for event in events:
        state, out = apply(state, event)
        outputs.extend(out)
    return state, outputs


# --- handlers ---------------------------------------------------------------------------------


def _on_query(state: EngineState, event: Query, seq: int, outputs: list[Output]) -> None:
    query_id = event.query_id
    if query_id in state.queries or query_id in state.answered:
        raise Rejected(DeadLetterReason.DUPLICATE_QUERY, f"query_id: {query_id!r} already seen")
    if not state.deployed and not any(m.live for m in state.models.values()):
        raise Rejected(DeadLetterReason.NO_MODELS, f"query {query_id!r}: no live model to route to")
    # Counted only once the query can no longer be rejected: a dead letter changes nothing.
    book = state.context
    context_index = context.NO_CONTEXT if book is None else book.note(event.features)
    if not state.deployed:
        reason: DeployReason = "initial" if state.stage < 0 else "deployed_set_empty"
        outputs.append(_deploy(state, seq, event.time, reason))

    deployed, config = state.deployed, state.config
    if book is not None:
        scores, caps, budget = context.route_inputs(state, book, context_index, query_id)
        p, status = solve_lists(scores.reward, scores.cost, caps, budget)
        cache, cached = RouteCache(scores, caps, budget, p, status), False
    else:
        kept = state.route_cache
        scores = kept.scores if kept is not None else state.policy.route_scores(deployed,
                                                                                query_id)
        caps, budget = _route_limits(state, scores)
        cached = kept is not None and kept.alpha == caps and kept.budget == budget
        if kept is not None and cached:
            cache = kept
        else:
            p, status = solve_lists(scores.reward, scores.cost, caps, budget)
            cache = RouteCache(scores, caps, budget, p, status)
            if scores.cacheable:
                state.route_cache = cache
    draw = uniform(config.seed, query_id)
    index = sample_index(cache.p, draw)
    chosen = deployed[index]
    estimate = scores.cost[index]
    # Everything that can fail (building the decision) comes before the state changes.
    decision = trusted(
        RoutingDecision, schema_version=1, type="routing_decision", domain=config.domain,
        query_id=query_id, seq=seq, stage=state.stage, time=event.time,
        policy=config.policy, model_id=chosen.model_id, deployed=[m.model_id for m in deployed],
        mu_u=cache.scores.reward, c_l=cache.scores.cost, alpha=cache.alpha, budget=cache.budget,
        p=cache.p, draw=draw, status=cache.status, cached=cached,
    )
    state.ledger.commit(estimate)
    chosen.add_pending(1)
    if chosen.price is None and chosen.n == 0:
        state.route_cache = None  # a probe went out: the ledger now charges cost_max for it
    state.queries[query_id] = QueryRecord(chosen.model_id, event.time, estimate,
                                          context=context_index)
    if len(state.queries) > config.max_tracked_queries:
        _forget(state, *state.queries.popitem(last=False))
    state.counters["routed"] += 1
    if cache.status in (BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE):
        state.counters["budget_infeasible"] += 1
    outputs.append(decision)


def _route_limits(state: EngineState, scores: Scores) -> tuple[list[float], float]:
    """RouteOPT's caps and budget for the next query: the budget ledger's plan, or the shares
    and the nominal budget when the ledger is off (or the policy is the paper's)."""
    config = state.config
    alpha = [m.alpha for m in state.deployed]
    if not (config.budget_control and state.policy.holds_budget):
        return alpha, config.budget
    planned = plan(state.ledger, config.budget, scores.cost,
                   scores.risk if scores.risk is not None else scores.cost, alpha,
                   config.overdraft, config.exploration_reserve, config.pacing_window)
    return planned.caps, planned.budget


def _on_feedback(state: EngineState, event: Feedback) -> None:
    if event.query_id in state.answered:
        raise Rejected(DeadLetterReason.DUPLICATE_FEEDBACK,
                       f"query_id: {event.query_id!r} already has feedback")
    record = state.queries.get(event.query_id)
    if record is None:
        raise Rejected(DeadLetterReason.UNKNOWN_QUERY,
                       f"query_id: {event.query_id!r} was never routed or is no longer tracked")
    ttl = state.config.query_ttl
    if ttl is not None and record.time < max(state.clock, event.time) - ttl:
        raise Rejected(DeadLetterReason.UNKNOWN_QUERY,
                       f"query_id: {event.query_id!r} is older than query_ttl ({ttl} s)")
    if event.model_id != record.model_id:
        raise Rejected(DeadLetterReason.MODEL_MISMATCH,
                       f"model_id: {event.model_id!r}, but query {event.query_id!r} was routed "
                       f"to {record.model_id!r}")
    del state.queries[event.query_id]
    state.answered[event.query_id] = None
    if len(state.answered) > ANSWERED_REMEMBERED:
        state.answered.popitem(last=False)
    model = state.models[record.model_id]
    model.add_pending(-1)
    model.observe(event.reward, event.cost)
    _refresh(state, model)
    if state.context is not None:
        context.observe(state, state.context, record.context, model, event.reward, event.cost)
    state.ledger.settle(record.estimate, event.cost)
    state.counters["feedback"] += 1
    state.spent += event.cost
    if record.model_id in state.deployed_ids:
        state.route_cache = None


def _refresh(state: EngineState, model: ModelStats) -> None:
    config = state.config
    model.refresh_bounds(config.gamma, config.radius_cost_scale, config.price_weight)


def _forget(state: EngineState, query_id: str, record: QueryRecord) -> None:
    """A query awaiting feedback leaves tracking: its feedback will no longer be accepted.  Its
    cost estimate stays committed in the ledger (assumed spent)."""
    state.models[record.model_id].add_pending(-1)
    state.route_cache = None
    state.counters["forgotten_queries"] += 1


def _on_arrival(state: EngineState, event: ModelArrived, seq: int, outputs: list[Output]) -> None:
    known = state.models.get(event.model_id)
    if known is not None and known.live:
        raise Rejected(DeadLetterReason.DUPLICATE_MODEL,
                       f"model_id: {event.model_id!r} is already live")
    config = state.config
    cost_min = config.cost_floor if event.cost_min is None else event.cost_min
    cost_max = config.cost_ceiling if event.cost_max is None else event.cost_max
    if cost_min > cost_max:
        raise Rejected(DeadLetterReason.INVALID_VALUE,
                       f"cost_min/cost_max: range [{cost_min}, {cost_max}] is empty with the "
                       f"configured defaults")
    if known is None:
        model = ModelStats(event.model_id, event.alpha, cost_min, cost_max, arrived_seq=seq,
                           price=event.price)
        state.models[event.model_id] = model
    else:
        # A retired model returning keeps what was learned about it; its terms are the new ones.
        model = known
        model.alpha, model.cost_min, model.cost_max = event.alpha, cost_min, cost_max
        model.price, model.arrived_seq, model.expired_seq = event.price, seq, None
    _refresh(state, model)
    if not state.policy.commits_to_stages and state.stage >= 0:
        outputs.append(_deploy(state, seq, event.time, "model_arrived"))


def _on_expiry(state: EngineState, event: ModelExpired, seq: int, outputs: list[Output]) -> None:
    model = state.models.get(event.model_id)
    if model is None or not model.live:
        state_word = "never arrived" if model is None else "already expired"
        raise Rejected(DeadLetterReason.UNKNOWN_MODEL, f"model_id: {event.model_id!r} {state_word}")
    model.expired_seq = seq
    if event.model_id in state.deployed_ids:
        state.set_deployed([m for m in state.deployed if m.model_id != event.model_id])
        if state.context is not None:
            state.context.plan = None  # re-planned over the rest at the next query
        if not state.deployed and any(m.live for m in state.models.values()):
            outputs.append(_deploy(state, seq, event.time, "deployed_set_empty"))


def _on_stage(state: EngineState, event: StageBoundary, seq: int, outputs: list[Output]) -> None:
    if event.stage <= state.stage:
        raise Rejected(DeadLetterReason.STALE_STAGE,
                       f"stage: {event.stage} is not after the current stage {state.stage}")
    state.stage = event.stage
    if state.deployed and not state.policy.redeploys:
        return
    if any(m.live for m in state.models.values()):
        outputs.append(_deploy(state, seq, event.time, "stage_boundary"))
    else:
        state.set_deployed([])


def _deploy(state: EngineState, seq: int, time: float, reason: DeployReason) -> DeploymentDecision:
    """DeployOPT over the live candidates (in arrival order); the support becomes deployed."""
    config = state.config
    if state.stage < 0:
        state.stage = 0
    candidates: list[ModelStats] = [m for m in state.models.values() if m.live]
    m_max = config.m_max if state.policy.commits_to_stages else len(candidates)
    alpha = [m.alpha for m in candidates]
    if state.context is not None:
        reward, cost, d, objective, status = context.deploy(state, state.context, candidates,
                                                            m_max)
    else:
        scores = state.policy.deploy_scores(candidates, state.stage)
        solution = deploy_opt(scores.reward, scores.cost, alpha, config.budget, m_max)
        state.set_deployed([candidates[i] for i in solution.selected])
        reward, cost, d = scores.reward, scores.cost, solution.d.tolist()
        objective, status = solution.objective, solution.status
    state.counters["deployments"] += 1
    return trusted(
        DeploymentDecision, schema_version=1, type="deployment_decision", domain=config.domain,
        seq=seq, stage=state.stage, time=time, policy=config.policy,
        reason=reason, candidates=[m.model_id for m in candidates], mu_u=reward,
        c_l=cost, alpha=alpha, budget=config.budget, m_max=m_max,
        selected=[m.model_id for m in state.deployed], d=d,
        objective=objective, status=status,
    )


def _forget_old_queries(state: EngineState) -> None:
    """Drop tracked queries older than ``query_ttl`` (insertion order ~ event-time order)."""
    assert state.config.query_ttl is not None
    horizon = state.clock - state.config.query_ttl
    queries = state.queries
    while queries:
        query_id = next(iter(queries))
        if queries[query_id].time >= horizon:
            break
        _forget(state, *queries.popitem(last=False))

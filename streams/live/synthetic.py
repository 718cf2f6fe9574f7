"""Event logs for tests and benchmarks, built by running the engine itself.

Feedback must name the model each query was routed to, which depends on the engine's
decisions; so the log is made by one pass of the engine over the bundled RouterBench table
(like the backtest), and every later fold of the same log with the same config routes
identically (decisions are a pure function of config, ordered events and seed).
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

import numpy as np

from schemas import Event, Feedback, Query, QueryFeatures, RoutingDecision
from stageroute.backtest.scenario import ModelWindow, Scenario, equal_stages
from stageroute.data import BUNDLED_TABLE
from stageroute.engine import EngineConfig, apply, initial_state
from streams.files import RewardTable, load_table


@lru_cache(maxsize=1)
def bundled_table() -> RewardTable:
    return load_table(BUNDLED_TABLE)


def default_config(table: RewardTable | None = None, *, m_max: int = 3, beta: float = 0.4,
                   gamma: float = 0.5, seed: int = 7) -> EngineConfig:
    table = table or bundled_table()
    return EngineConfig.model_validate({
        "m_max": m_max, "budget": beta * float(np.nanmax(table.mean_cost())), "gamma": gamma,
        "cost_ceiling": float(np.nanmax(table.costs)), "seed": seed})


def synthetic_log(n_queries: int, config: EngineConfig, *, n_models: int = 5,
                  feedback_delay: int = 5, domain: str = "default", alpha: float = 0.6,
                  seed: int = 0, table: RewardTable | None = None) -> list[Event]:
    """Arrivals of ``n_models`` models (all but the last at t = 0, the last at 40 % of the
    horizon; the first expires at 70 %), ``K = ceil(T^(1/3))`` stage boundaries, ``n_queries``
    queries (table rows drawn with ``seed``) and the feedback of each answered query
    ``feedback_delay`` queries later. ``config.domain`` is replaced by ``domain``."""
    table = table or bundled_table()
    config = config.model_copy(update={"domain": domain})
    models = table.models[:n_models]
    windows = [ModelWindow(m, 0, None) for m in models[:-1]]
    windows.append(ModelWindow(models[-1], int(0.4 * n_queries), None))
    windows[0] = ModelWindow(models[0], 0, int(0.7 * n_queries))
    scenario = Scenario(n_queries, tuple(windows), equal_stages(n_queries))
    exogenous = scenario.events_before(alpha)
    column = {m: j for j, m in enumerate(table.models)}
    rows = np.random.default_rng(seed).integers(0, table.n_rows, n_queries)
    state = initial_state(config)
    log: list[Event] = []
    due: deque[tuple[int, Feedback]] = deque()

    def step(event: Event) -> RoutingDecision | None:
        log.append(event)
        _, outputs = apply(state, event)
        return next((o for o in outputs if isinstance(o, RoutingDecision)), None)

    for t in range(n_queries):
        for event in exogenous.get(t, ()):
            step(event.model_copy(update={"domain": domain}))
        while due and due[0][0] <= t:
            step(due.popleft()[1])
        row = int(rows[t])
        query_id = f"{domain}-q{t}"
        decision = step(Query(query_id=query_id, time=float(t), domain=domain,
                              features=QueryFeatures(task=table.tasks[row] or None)))
        if decision is None:
            continue
        j = column[decision.model_id]
        reward = float(table.scores[row, j])
        if reward == reward:  # NaN: missing outcome, no feedback ever
            due.append((t + feedback_delay, Feedback(
                query_id=query_id, model_id=decision.model_id, reward=reward,
                cost=float(table.costs[row, j]), time=float(t + feedback_delay),
                domain=domain)))
    while due:
        step(due.popleft()[1])
    return log

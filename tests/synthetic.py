"""Event logs for the live tests and the stream benchmark, built by running the engine itself.

Feedback must name the model each query was routed to, which depends on the engine's
decisions; so the log is made by one pass of the engine driver over the bundled RouterBench
table (as the backtest does), and every later fold of the same log with the same config routes
identically (decisions are a pure function of config, ordered events and seed).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from schemas import Event
from stageroute.backtest.driver import Stream, drive, iid_rows, table_workload
from stageroute.backtest.scenario import ModelWindow, Scenario, equal_stages
from stageroute.backtest.table import RewardTable
from stageroute.engine import EngineConfig, Output, initial_state
from streams.data import BUNDLED_TABLE
from streams.tables import load_table


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
    queries (table rows drawn with ``seed``, ids ``{domain}-q{t}``) and the feedback of each
    answered query ``feedback_delay`` queries later. ``config.domain`` is replaced by
    ``domain``."""
    table = table or bundled_table()
    models = table.models[:n_models]
    windows = [ModelWindow(models[0], 0, int(0.7 * n_queries)),
               *(ModelWindow(m, 0, None) for m in models[1:-1]),
               ModelWindow(models[-1], int(0.4 * n_queries), None)]
    scenario = Scenario(n_queries, tuple(windows), equal_stages(n_queries))
    stream = Stream(iid_rows(table.n_rows, n_queries, seed), scenario, alpha,
                    feedback_delay=feedback_delay, domain=domain, query_prefix=f"{domain}-")
    log: list[Event] = []

    def record(seq: int, event: Event, outputs: list[Output]) -> None:
        log.append(event)

    state = initial_state(config.model_copy(update={"domain": domain}))
    for _ in drive(state, table_workload(table, stream), record):
        pass
    return log

"""Backtest: replay a reward table as a query stream through the engine, one run per policy.

Every policy sees the same query sequence, the same arrivals, expiries and stage starts, the
same budget, shares and M_max.  Feedback is the table's score and cost of the model the policy
chose for that row (a blank score is a missing outcome: no feedback ever comes), delivered
``feedback_delay`` queries later.  The oracle runs first on the same stream; regret is measured
in expectation against it:

    regret_T = sum_t ( sum_m p*_t(m) mu_m  -  sum_m p_t(m) mu_m )

with ``mu_m`` the table's mean score of model m over the rows of query t's task (over all rows
when the table has no tasks), ``p*`` the oracle's and ``p`` the policy's routing distribution:
the expected reward of a decision given what the query is, so that a policy that routes by
context is credited for it.  Realised averages (reward, cost) count queries with an outcome.

When the table has tasks the *contextual oracle* also runs (``run_contextual_oracle``): true
means per (task, model), the same limits, schedule, ledger and plan over contexts as the
contextual policies; every summary reports the policy's reward as a percentage of both
oracles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from schemas import DeploymentDecision, Event
from stageroute.backtest.driver import Stream, drive, table_workload
from stageroute.backtest.table import RewardTable
from stageroute.engine import EngineConfig, Output, initial_state

OVER_BUDGET = 1.02
"""A realised average cost above this multiple of the budget is over budget."""

Clock = Callable[[], float]
"""Seconds from an arbitrary origin (the caller's ``time.perf_counter``), for q/s only."""


class Recorder(Protocol):
    """Where a run's journal and decisions go (the audit store, or nowhere)."""

    def start_run(self, config: EngineConfig, meta: dict[str, Any]) -> str: ...
    def record(self, seq: int, event: Event, outputs: list[Output]) -> None: ...
    def finish_run(self, summary: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class RunResult:
    policy: str
    seed: int
    queries: int
    avg_reward: float
    avg_cost: float
    budget: float
    expected_reward: float
    seconds: float
    run_id: str | None
    #: (stage, reason, selected, query index it took effect at)
    deployments: list[tuple[int, str, list[str], int]]
    dead_letters: int
    #: Routing decisions made while the budget was below every deployed mix.
    budget_infeasible: int
    #: routing decisions per solver status ("optimal", "caps_infeasible", ...)
    statuses: dict[str, int]
    #: per-query expected reward and realised cost (NaN where no outcome), for curves
    expected: np.ndarray = field(repr=False)
    costs: np.ndarray = field(repr=False)
    #: per-query index into the table's models of the model routed to (-1: none)
    chosen: np.ndarray = field(repr=False)

    def summary(self, oracle: RunResult | None,
                contextual_oracle: RunResult | None = None) -> dict[str, Any]:
        """Figures as JSON values; ``None`` where undefined (no oracle, no outcome)."""
        regret = float(np.sum(oracle.expected - self.expected)) if oracle else math.nan
        oracle_avg = oracle.avg_reward if oracle else math.nan
        context_avg = contextual_oracle.avg_reward if contextual_oracle else math.nan
        figures = {
            "policy": self.policy,
            "seed": self.seed,
            "run_id": self.run_id,
            "queries": self.queries,
            "avg_reward": self.avg_reward,
            "avg_cost": self.avg_cost,
            "budget": self.budget,
            "budget_use": self.avg_cost / self.budget,
            "over_budget": bool(self.avg_cost > OVER_BUDGET * self.budget),
            "budget_infeasible": self.budget_infeasible,
            "expected_reward": self.expected_reward,
            "oracle_avg_reward": oracle_avg,
            "pct_of_oracle": 100.0 * self.avg_reward / oracle_avg if oracle else math.nan,
            "contextual_oracle_avg_reward": context_avg,
            "pct_of_contextual_oracle": 100.0 * self.avg_reward / context_avg
            if contextual_oracle and context_avg else math.nan,
            "regret": regret,
            "seconds": self.seconds,
            "queries_per_second": self.queries / self.seconds if self.seconds else math.nan,
            "deployments": [{"stage": s, "reason": r, "selected": sel, "query": t}
                            for s, r, sel, t in self.deployments],
            "decision_status": dict(sorted(self.statuses.items())),
            "dead_letters": self.dead_letters,
        }
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in figures.items()}


def run(table: RewardTable, stream: Stream, config: EngineConfig,
        recorder: Recorder | None = None, progress: Callable[[int], None] | None = None,
        clock: Clock | None = None, oracle: RunResult | None = None) -> RunResult:
    """One policy over the stream; ``progress(n)`` is called every 1,000 queries. The
    recorder's run is finished with the summary against ``oracle`` (if given)."""
    state = initial_state(config)
    horizon = stream.scenario.horizon
    pooled = dict(zip(table.models, table.mean_reward().tolist()))
    by_task = {task: dict(zip(table.models, reward.tolist()))
               for task, (reward, _) in table.task_means().items()}
    tasks, rows = table.tasks, stream.rows
    column = {m: j for j, m in enumerate(table.models)}
    expected = np.empty(horizon)
    realised_cost = np.full(horizon, np.nan)
    chosen = np.full(horizon, -1, dtype=np.int16)
    statuses: dict[str, int] = {}
    reward_sum = cost_sum = 0.0
    answered = 0
    deployments: list[tuple[int, str, list[str], int]] = []
    run_id = recorder.start_run(config, {"horizon": horizon}) if recorder else None

    def record(seq: int, event: Event, outputs: list[Output]) -> None:
        if recorder:
            recorder.record(seq, event, outputs)
        for out in outputs:
            if isinstance(out, DeploymentDecision):
                deployments.append((out.stage, out.reason, list(out.selected), int(out.time)))

    started = clock() if clock else 0.0
    for step in drive(state, table_workload(table, stream), record):
        t, decision = step.t, step.decision
        if decision is None:
            expected[t] = 0.0
        else:
            true_mean = by_task.get(tasks[int(rows[t])], pooled)
            expected[t] = math.fsum(p * true_mean[m] for p, m in zip(decision.p,
                                                                     decision.deployed))
            chosen[t] = column[decision.model_id]
            statuses[decision.status] = statuses.get(decision.status, 0) + 1
        if step.outcome is not None:
            reward, cost = step.outcome
            reward_sum += reward
            cost_sum += cost
            answered += 1
            realised_cost[t] = cost
        if progress and (t + 1) % 1000 == 0:
            progress(1000)
    seconds = clock() - started if clock else math.nan
    if progress:
        progress(horizon % 1000)

    result = RunResult(
        policy=config.policy, seed=config.seed, queries=horizon,
        avg_reward=reward_sum / answered if answered else math.nan,
        avg_cost=cost_sum / answered if answered else math.nan,
        budget=config.budget, expected_reward=float(expected.mean()), seconds=seconds,
        run_id=run_id, deployments=deployments, dead_letters=state.counters["dead_letters"],
        budget_infeasible=state.counters["budget_infeasible"],
        statuses=statuses, expected=expected, costs=realised_cost, chosen=chosen,
    )
    if recorder:
        recorder.finish_run(result.summary(oracle))
    return result


def oracle_means(table: RewardTable) -> dict[str, list[float]]:
    """True mean score and cost per model, as the oracle policy's parameters."""
    return {m: [float(r), float(c)] for m, r, c in
            zip(table.models, table.mean_reward().tolist(), table.mean_cost().tolist())}


def contextual_oracle_params(table: RewardTable) -> dict[str, Any]:
    """The contextual oracle's parameters: true means per model, and per (task, model)."""
    return {"means": oracle_means(table), "context_means": {
        task: {m: [float(r), float(c)] for m, r, c in zip(table.models, reward.tolist(),
                                                          cost.tolist())}
        for task, (reward, cost) in table.task_means().items()}}


def policy_config(table: RewardTable, base: EngineConfig, policy: str) -> EngineConfig:
    """``base`` for ``policy``; the oracles get the table's true means (the contextual one
    per task too)."""
    if policy == "oracle":
        return base.model_copy(update={"policy": "oracle",
                                       "policy_params": {"means": oracle_means(table)}})
    if policy == "contextual_oracle":
        return base.model_copy(update={"policy": policy,
                                       "policy_params": contextual_oracle_params(table)})
    return base.model_copy(update={"policy": policy})


def run_contextual_oracle(table: RewardTable, stream: Stream, base: EngineConfig,
                          recorder: Recorder | None = None,
                          progress: Callable[[int], None] | None = None,
                          clock: Clock | None = None) -> RunResult | None:
    """The contextual oracle on the stream; None when the table has no tasks."""
    if not table.task_means():
        return None
    return run(table, stream, policy_config(table, base, "contextual_oracle"), recorder,
               progress, clock)


def run_all(table: RewardTable, stream: Stream, base: EngineConfig, policies: Sequence[str],
            recorder: Recorder | None = None, progress: Callable[[int], None] | None = None,
            clock: Clock | None = None) -> tuple[RunResult, list[RunResult]]:
    """The oracle, then each policy, on the same stream; returns (oracle, results)."""
    oracle = run(table, stream, policy_config(table, base, "oracle"), recorder, progress, clock)
    results = [run(table, stream, policy_config(table, base, name), recorder, progress, clock,
                   oracle)
               for name in policies]
    return oracle, results

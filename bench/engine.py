"""Pure-engine throughput: ``apply`` calls per second on a fixed event log, no I/O.

    python -m bench.engine [--horizon 50000] [--passes 3] [--seed 0] [--profile]
                           [--policies stageroute,contextual] [--contexts 40]

Workload: the bundled RouterBench table, all 11 models arrived at t = 0 (alpha = 0.25 each,
their mean cost as list price), ``K = ceil(T^(1/3))`` equal stages, rows drawn i.i.d. with the
seed, each policy of ``--policies`` (default stageroute) with the budget ledger, budget = 0.5 x
the highest mean per-query model cost, gamma = 0.5.  Feedback (the table's score and cost for
the routed model) is delivered for every query that has an outcome, immediately after it, or in
batches of 100 queries.  Each query carries its row's task: with ``--contexts N`` the table's
three tasks are split into N contexts (each task's rows dealt round-robin into about N / 3
groups), else the table's own three; only the contextual policies route on them.

The header says which engine ran: the interpreted one, or the compiled build of ``setup.py``
(``STAGEROUTE_COMPILE=1 pip install -e .``).

Feedback depends on the model routed to, so the log is built by one untimed pass; each timed
pass then replays that fixed log through ``apply`` with a fresh state (decisions are a pure
function of config, events and seed, so the replay routes identically; this is checked).  Only
the loop of ``apply`` calls is timed.  Prints routed queries/s and events/s (median of the
passes) and the share of routing decisions served from the route cache, per policy, for
M_max = 4, 8, 16 with feedback per query and M_max = 8 with feedback in batches of 100, and, as
the reference measured in the same run, M_max = 8 per query with the ledger off (the nominal
budget on every query): the ratio is what the ledger costs.  With several policies, each one's
M_max = 8 figure is also given as a ratio to the first policy's in the same run (the machine
may be shared).  ``--profile`` adds the top 10 functions by tottime from cProfile over one pass
of the last policy at M_max = 8, feedback per query.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import stageroute
from schemas import Event
from stageroute.backtest.driver import Stream, drive, iid_rows, table_workload
from stageroute.backtest.scenario import all_live, equal_stages
from stageroute.engine import EngineConfig, Output, apply, initial_state
from streams.data import BUNDLED_TABLE
from streams.tables import RewardTable, load_table

ALPHA = 0.25
BETA = 0.5
GAMMA = 0.5
TARGET_QPS = 20_000
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Log:
    """A fixed event log and what the untimed build pass made of it."""

    label: str
    config: EngineConfig
    events: list[Event]
    queries: int
    cached: int
    counters: dict[str, int]
    spent: float


def build_log(table: RewardTable, config: EngineConfig, horizon: int, seed: int,
              feedback_batch: int, label: str) -> Log:
    """Run the engine once to build the log (feedback for the routed model)."""
    scenario = all_live(table.models, horizon)
    prices = dict(zip(table.models, table.mean_cost().tolist()))
    stream = Stream(iid_rows(table.n_rows, horizon, seed), scenario, ALPHA, prices,
                    feedback_batch=feedback_batch)
    state = initial_state(config)
    events: list[Event] = []
    cached = 0

    def record(seq: int, event: Event, outputs: list[Output]) -> None:
        events.append(event)

    for step in drive(state, table_workload(table, stream), record):
        assert step.decision is not None, step
        cached += step.decision.cached
    if state.counters["dead_letters"]:
        raise RuntimeError(f"{label}: {state.counters['dead_letters']} dead letters in the log")
    return Log(label, config, events, horizon, cached, dict(state.counters), state.spent)


def timed_pass(log: Log) -> float:
    """Seconds for one replay of the log through ``apply`` with a fresh state."""
    state = initial_state(log.config)
    events = log.events
    started = time.perf_counter()
    for event in events:
        apply(state, event)
    seconds = time.perf_counter() - started
    if state.counters != log.counters or state.spent != log.spent:
        raise RuntimeError(f"{log.label}: the replay diverged from the build pass")
    return seconds


def make_config(table: RewardTable, m_max: int, seed: int, ledger: bool = True,
                policy: str = "stageroute") -> EngineConfig:
    return EngineConfig(
        policy=policy, m_max=m_max, budget=BETA * float(table.mean_cost().max()),
        gamma=GAMMA, cost_ceiling=float(np.nanmax(table.costs)), seed=seed,
        budget_control=ledger,
    )


def split_tasks(table: RewardTable, contexts: int) -> RewardTable:
    """``table`` with its tasks split into ``contexts`` contexts: task i's rows dealt
    round-robin into ``contexts // tasks`` groups (one more for the first ``contexts % tasks``
    tasks), named ``task/j``."""
    tasks = sorted(set(table.tasks))
    groups = {t: contexts // len(tasks) + (i < contexts % len(tasks)) for i, t in enumerate(tasks)}
    seen = dict.fromkeys(tasks, 0)
    named = []
    for task in table.tasks:
        named.append(f"{task}/{seen[task] % groups[task]}")
        seen[task] += 1
    return RewardTable(table.models, table.sample_ids, tuple(named), table.scores, table.costs,
                       source=f"{table.source} ({contexts} contexts)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--horizon", type=int, default=50_000, help="queries T (default 50000)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one pass at M_max = 8, feedback per query")
    parser.add_argument("--policies", default="stageroute",
                        help="comma-separated policies (default stageroute)")
    parser.add_argument("--contexts", type=int, default=None,
                        help="split the table's tasks into this many contexts")
    args = parser.parse_args()

    table = load_table(BUNDLED_TABLE)
    if args.contexts:
        table = split_tasks(table, args.contexts)
    horizon = args.horizon
    policies = [p for p in args.policies.split(",") if p]
    print(f"Engine throughput: {table.n_rows} RouterBench rows, {len(table.models)} models "
          f"arrived, alpha = {ALPHA}, list prices, T = {horizon:,}, "
          f"K = {len(equal_stages(horizon))} stages, gamma = {GAMMA}, "
          f"{len(set(table.tasks))} contexts (tasks)")
    build = ("compiled (mypyc, STAGEROUTE_COMPILE=1 at install)" if stageroute.COMPILED
             else "interpreted (STAGEROUTE_COMPILE=1 pip install -e . compiles it: setup.py)")
    print(f"engine: {build}")
    print(f"timed: apply() over the prebuilt log, fresh state per pass; median of "
          f"{args.passes} passes\n")
    cases = [(8, 1, True), (4, 1, True), (16, 1, True), (8, 100, True), (8, 1, False)]
    print(f"{'policy':<12} {'M_max':>5} {'feedback':>10} {'budget':>8} {'events':>8} "
          f"{'queries/s':>10} {'events/s':>10} {'us/query':>9} {'cached':>7} "
          f"{'min..max q/s':>17}")
    logs: dict[tuple[str, int, int, bool], Log] = {}
    results: dict[tuple[str, int, int, bool], float] = {}
    for policy in policies:
        for m_max, batch, ledger in cases:
            label = f"{policy}, M_max={m_max}, feedback batch {batch}, ledger {ledger}"
            log = build_log(table, make_config(table, m_max, args.seed, ledger, policy),
                            horizon, args.seed, batch, label)
            logs[(policy, m_max, batch, ledger)] = log
            seconds = [timed_pass(log) for _ in range(args.passes)]
            med = statistics.median(seconds)
            qps = [log.queries / s for s in seconds]
            results[(policy, m_max, batch, ledger)] = log.queries / med
            fb = "per query" if batch == 1 else f"per {batch}"
            print(f"{policy:<12} {m_max:>5} {fb:>10} {'ledger' if ledger else 'nominal':>8} "
                  f"{len(log.events):>8,} {log.queries / med:>10,.0f} "
                  f"{len(log.events) / med:>10,.0f} {med / log.queries * 1e6:>9.1f} "
                  f"{100.0 * log.cached / log.queries:>6.1f}% "
                  f"{min(qps):>8,.0f}..{max(qps):<8,.0f}")

    print()
    first = results[(policies[0], 8, 1, True)]
    for policy in policies:
        headline = results[(policy, 8, 1, True)]
        print(f"{policy}: the budget ledger runs at "
              f"{headline / results[(policy, 8, 1, False)]:.2f}x the speed of the nominal "
              f"budget (M_max = 8, feedback per query, same run)")
        verdict = "meets" if headline >= TARGET_QPS else "MISSES"
        ratio = (f" ({headline / first:.2f}x {policies[0]} in this run)"
                 if policy != policies[0] else "")
        print(f"{policy}, M_max = 8, feedback for every query: {headline:,.0f} routed "
              f"queries/s on one core{ratio} -> {verdict} the target of >= {TARGET_QPS:,}")

    if args.profile:
        log = logs[(policies[-1], 8, 1, True)]
        state = initial_state(log.config)
        profiler = cProfile.Profile()
        profiler.enable()
        for event in log.events:
            apply(state, event)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(10)
        print(f"\nProfile: one pass, M_max = 8, feedback per query "
              f"({stats.total_tt:.2f} s under cProfile)")
        text = out.getvalue()
        for prefix in sorted({sysconfig.get_paths()["purelib"], str(ROOT)}, key=len,
                             reverse=True):
            text = text.replace(prefix + os.sep, "")
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print("\n".join(line.rstrip() for line in lines[start:] if line.strip()))


if __name__ == "__main__":
    main()

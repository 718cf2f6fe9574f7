"""Running a planned backtest: every (seed, policy) run, in worker processes, with the audit
trail and a progress line.

A run is the pure ``stageroute.backtest.runner.run`` over one seed's stream. Runs are spread
over ``jobs`` processes (forked, so the table and streams are not copied through pickles);
each writes its own audit run, but leaves it ``running``: a policy's summary needs its seed's
oracle, so this process marks every run finished, with its summary, once all are done.

Interrupted (Ctrl-C, SIGTERM): the workers are stopped and every run of the invocation that
did not finish is marked ``interrupted``. What they stored is a consistent prefix of their
trail (each batch is one transaction), which ``audit verify`` still checks.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from stageroute.backtest.driver import Stream
from stageroute.backtest.runner import RunResult, policy_config, run
from stageroute.backtest.table import RewardTable
from stageroute.engine import EngineConfig


@dataclass(frozen=True)
class Task:
    seed: int
    policy: str


@dataclass(frozen=True)
class Job:
    """Everything a worker needs; inherited by forked workers."""

    table: RewardTable
    streams: dict[int, Stream]
    configs: dict[int, EngineConfig]
    tasks: tuple[Task, ...]
    db_url: str | None
    invocation_id: str | None
    meta: dict[str, Any]


_JOB: Job | None = None
_COUNTS: Any = None  # shared queries-done counters, one per task


def _execute(index: int) -> RunResult:
    assert _JOB is not None
    job, task = _JOB, _JOB.tasks[index]
    recorder = None
    if job.db_url is not None:
        from streams.audit.recorder import AuditRecorder
        from streams.audit.store import AuditStore

        recorder = AuditRecorder(AuditStore(job.db_url), "backtest", job.meta,
                                 job.invocation_id, defer_finish=True)
    counts = _COUNTS

    def progress(n: int) -> None:
        if counts is not None:
            counts[index] += n

    config = policy_config(job.table, job.configs[task.seed], task.policy)
    try:
        return run(job.table, job.streams[task.seed], config, recorder, progress,
                   time.perf_counter)
    finally:
        if recorder is not None:
            recorder.store.close()


def _worker_signals() -> None:
    # The parent handles Ctrl-C (it reaches the whole process group) and stops the workers
    # with SIGTERM, which must kill them outright: not the parent's SIGTERM handler they
    # inherited (raising in a worker that holds the pool's queue lock deadlocks the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the command like Ctrl-C, so interrupted runs are marked."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(job: Job, jobs: int, show: Callable[[list[str], int], None] | None = None,
            ) -> list[RunResult]:
    """Run every task (results in task order). ``show(active, done)`` is called a few times
    a second with a description of each active run and the number of runs done."""
    global _JOB, _COUNTS
    _JOB = job
    n = len(job.tasks)
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    _COUNTS = context.Array("q", n, lock=False) if jobs > 1 else [0] * n
    horizon = next(iter(job.streams.values())).scenario.horizon

    def describe(i: int) -> str:
        task = job.tasks[i]
        return f"seed {task.seed} {task.policy} {_COUNTS[i]:,}/{horizon:,} q"

    try:
        with _sigterm_interrupts():
            if jobs <= 1:
                return _serial(n, describe, show)
            return _parallel(context, n, jobs, describe, show)
    finally:
        _JOB = _COUNTS = None


def _serial(n: int, describe: Callable[[int], str],
            show: Callable[[list[str], int], None] | None) -> list[RunResult]:
    results = []
    for i in range(n):
        if show:
            show([describe(i)], i)
        results.append(_execute(i))
    return results


def _parallel(context: Any, n: int, jobs: int, describe: Callable[[int], str],
              show: Callable[[list[str], int], None] | None) -> list[RunResult]:
    pool = context.Pool(min(jobs, n), initializer=_worker_signals)
    try:
        pending = [pool.apply_async(_execute, (i,)) for i in range(n)]
        while not all(p.ready() for p in pending):
            if show:
                active = [describe(i) for i, p in enumerate(pending)
                          if not p.ready() and _COUNTS[i] > 0]
                show(active, sum(p.ready() for p in pending))
            time.sleep(0.2)
        results = [p.get() for p in pending]
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return results


def default_jobs(runs: int) -> int:
    """Worker processes by default: one per CPU this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(runs, cpus, 4))


def by_seed(tasks: Sequence[Task], results: Sequence[RunResult],
            ) -> dict[int, tuple[RunResult, list[RunResult]]]:
    """Seed -> (oracle result, the policies' results in order)."""
    grouped: dict[int, tuple[RunResult | None, list[RunResult]]] = {}
    for task, result in zip(tasks, results):
        oracle, others = grouped.setdefault(task.seed, (None, []))
        if task.policy == "oracle":
            grouped[task.seed] = (result, others)
        else:
            others.append(result)
    out = {}
    for seed, (oracle, others) in grouped.items():
        assert oracle is not None
        out[seed] = (oracle, others)
    return out

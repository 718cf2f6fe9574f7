"""Audit verification (pure): prove stored decisions follow from their inputs and the journal.

Two independent checks over a run's stored rows:

1. *Re-derivation*, row by row, from the inputs each decision recorded:
   routing ``p == RouteOPT(mu_u, c_l, alpha, budget)`` bit for bit with the same status,
   ``draw == uniform(seed, query_id)`` and ``model_id == deployed[sample_index(p, draw)]``
   (for every policy: a contextual decision records its context's scores, caps and budget);
   deployment ``selected == DeployOPT(mu_u, c_l, alpha, budget, m_max)`` with the same status.
   A contextual deployment (ContextDeployOPT, ``solvers.context_deploy``) is a program over
   (context, model) whose row records per-candidate averages over the context mix (``mu_u``,
   ``c_l``) and the plan's traffic shares ``d``; from those the row is checked as far as they
   determine it: exactly min(m_max, candidates) models selected, ``d`` a distribution within
   the shares and zero outside the selection, and an objective at least DeployOPT's on the
   averages (planning every context alike is one of the plans the contextual program
   considers, so it can never be worth more).  The replay re-derives the program itself.
2. *Replay*: the journal's events, in sequence order, through a fresh engine with the run's
   config must reproduce exactly the stored decisions (every field), no more and no fewer.
   This re-derives the engine's whole state along the way, the budget ledger included.  A run
   made by an older engine version (``EngineConfig.engine_version``) cannot be replayed by
   this one: its rows are still re-derived, and the report says the replay was not done.

Decisions are matched by ``seq`` (the event they were made at): a query id the engine had
forgotten may be used again, and each use then has a decision of its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas import DeploymentDecision, RoutingDecision, decode_event
from solvers import OPTIMAL, deploy_opt
from solvers.route_opt import solve_lists
from stageroute.engine import EngineConfig, apply, initial_state
from stageroute.engine.config import ENGINE_VERSION
from stageroute.policies import POLICIES, Policy, sample_index, uniform
from stageroute.policies.contextual import ContextualMixin

#: Tolerance of the checks on a contextual deployment's floats (sums of plan weights).
_TOL = 1e-9

#: Decision fields that are not part of the decision itself.
_ENVELOPE = {"schema_version", "type", "domain"}


@dataclass
class Report:
    routing_checked: int = 0
    deployments_checked: int = 0
    events_replayed: int = 0
    mismatches: list[str] = field(default_factory=list)
    #: Why the journal was not replayed, if it was not.
    not_replayed: str | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def add(self, problem: str) -> None:
        if len(self.mismatches) < 1000:
            self.mismatches.append(problem)


def rederive_routing(row: dict[str, Any], seed: int) -> list[str]:
    """Problems with one stored routing decision, judged from its own inputs."""
    where = f"routing decision for query {row['query_id']!r} (seq {row['seq']})"
    p, status = solve_lists(row["mu_u"], row["c_l"], row["alpha"], row["budget"])
    problems = []
    if p != list(row["p"]) or status != row["status"]:
        problems.append(f"{where}: RouteOPT on the recorded inputs gives p={p} ({status}), "
                        f"stored p={row['p']} ({row['status']})")
    if row["draw"] != uniform(seed, row["query_id"]):
        problems.append(f"{where}: draw {row['draw']} is not the draw keyed by (seed, query)")
    chosen = row["deployed"][sample_index(list(row["p"]), row["draw"])]
    if chosen != row["model_id"]:
        problems.append(f"{where}: p and draw choose {chosen!r}, stored {row['model_id']!r}")
    return problems


def rederive_deployment(row: dict[str, Any]) -> list[str]:
    where = f"deployment decision at seq {row['seq']} (stage {row['stage']})"
    if issubclass(POLICIES.get(row["policy"], Policy), ContextualMixin):
        return [f"{where}: {problem}" for problem in _contextual_deployment_problems(row)]
    solution = deploy_opt(row["mu_u"], row["c_l"], row["alpha"], row["budget"], row["m_max"])
    selected = [row["candidates"][i] for i in solution.selected]
    if selected != list(row["selected"]) or solution.status != row["status"]:
        return [f"{where}: DeployOPT on the recorded inputs selects {selected} "
                f"({solution.status}), stored {row['selected']} ({row['status']})"]
    return []


def _contextual_deployment_problems(row: dict[str, Any]) -> list[str]:
    """What a contextual deployment row's own fields can show wrong (module docstring)."""
    problems = []
    candidates, selected, d = row["candidates"], row["selected"], row["d"]
    if len(selected) != min(row["m_max"], len(candidates)):
        problems.append(f"selects {len(selected)} models, not min(m_max, candidates)")
    if any(share != 0.0 for m, share in zip(candidates, d) if m not in selected):
        problems.append("d is not 0 outside the selected models")
    caps_scaled = str(row["status"]).startswith("caps_")
    if abs(math.fsum(d) - 1.0) > _TOL or any(share < -_TOL for share in d) or (
            not caps_scaled and any(s > a + _TOL for s, a in zip(d, row["alpha"]))):
        problems.append(f"d = {d} is not a distribution within the shares")
    if row["status"] == OPTIMAL:
        flat = deploy_opt(row["mu_u"], row["c_l"], row["alpha"], row["budget"], row["m_max"])
        if flat.status == OPTIMAL and row["objective"] < flat.objective - _TOL:
            problems.append(f"objective {row['objective']} is below DeployOPT's "
                            f"{flat.objective} on the recorded averages")
    return problems


def replay(config: EngineConfig, journal: Iterable[tuple[int, dict[str, Any]]],
           ) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Re-run the journal; yields ``(kind, seq, decision fields)`` for every decision."""
    state = initial_state(config)
    for seq, event in journal:
        if seq != state.seq:
            raise ValueError(f"journal gap: expected seq {state.seq}, found {seq}")
        _, outputs = apply(state, decode_event(event))
        for out in outputs:
            fields = {k: v for k, v in out.model_dump().items() if k not in _ENVELOPE}
            if isinstance(out, RoutingDecision):
                yield "routing", out.seq, fields
            elif isinstance(out, DeploymentDecision):
                yield "deployment", out.seq, fields


def verify(config: EngineConfig, journal: Iterable[tuple[int, dict[str, Any]]],
           routing: Iterable[dict[str, Any]], deployments: Iterable[dict[str, Any]]) -> Report:
    """Both checks over one run; the stored rows are dicts keyed by decision field names."""
    report = Report()
    stored = {"routing": {}, "deployment": {}}  # type: dict[str, dict[Any, dict[str, Any]]]
    for row in routing:
        report.routing_checked += 1
        for problem in rederive_routing(row, config.seed):
            report.add(problem)
        stored["routing"][row["seq"]] = row
    for row in deployments:
        report.deployments_checked += 1
        for problem in rederive_deployment(row):
            report.add(problem)
        stored["deployment"][row["seq"]] = row

    if config.engine_version != ENGINE_VERSION:
        report.not_replayed = (f"the run was made by engine version {config.engine_version}; "
                               f"this is version {ENGINE_VERSION}")
        return report
    produced = {"routing": set(), "deployment": set()}  # type: dict[str, set[Any]]
    try:
        for kind, key, fields in replay(config, _counting(journal, report)):
            produced[kind].add(key)
            found = stored[kind].get(key)
            if found is None:
                report.add(f"replay produced a {kind} decision at seq {key} that is not "
                           f"stored{_query(fields)}")
                continue
            differing = [k for k, v in fields.items() if k in found and found[k] != v]
            if differing:
                shown = ", ".join(f"{k}={found[k]!r} vs {fields[k]!r}" for k in differing[:3])
                report.add(f"{kind} decision at seq {key}{_query(fields)}: stored "
                           f"{', '.join(differing)} differ from the replay ({shown})")
    except ValueError as exc:
        report.add(f"journal cannot be replayed: {exc}")
    for kind, rows in stored.items():
        for key in rows.keys() - produced[kind]:
            report.add(f"stored {kind} decision at seq {key}{_query(rows[key])} is not "
                       f"produced by replaying the journal")
    return report


def _counting(journal: Iterable[tuple[int, dict[str, Any]]],
              report: Report) -> Iterator[tuple[int, dict[str, Any]]]:
    for entry in journal:
        report.events_replayed += 1
        yield entry


def _query(fields: dict[str, Any]) -> str:
    return f" (query {fields['query_id']!r})" if "query_id" in fields else ""

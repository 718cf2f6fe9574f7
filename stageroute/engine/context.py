"""Contextual routing in the engine: the (context, model) statistics, the plan that holds the
budget and the throughput shares over the whole traffic, and each query's RouteOPT inputs.

Contexts are numbered as first seen (at most the policy's ``max_contexts``; later ones, and
queries without a context, are context 0, "no context", scored by the pooled statistics).

**The plan.**  At each deployment (ContextDeployOPT chooses the set and the plan together),
after a deployed model expires, when a context is seen for the first time and every
``replan_every`` routed queries per context in the plan (so that each context has gathered
about that many new observations; it also keeps the solving cost per query flat in the number
of contexts), the engine solves ContextLP (``solvers.context_lp``) over the
deployed models and every context seen so far plus context 0, with the scores of the current
statistics and the frequencies

    f_x = (n_x + 1) / (n + X)        n_x queries of context x so far, X contexts in the plan

(add-one smoothing keeps a defined plan row for every context, context 0 included).  From its
optimum ``p*`` each context gets a planned spend and caps:

    b_x      = sum_m p*_xm c_xm
    kappa_xm = min(1, p*_xm + s_m),      s_m = alpha_m - sum_x f_x p*_xm  (the unused share)

so that ``sum_x f_x b_x <= b`` and ``sum_x f_x kappa_xm <= alpha_m``: contexts that each route
within their caps and planned spend hold the budget and every share over all traffic (in
expectation over the context mix), whatever the mix of spend between them.  A model whose share
binds has ``s_m = 0``, so its share is divided among contexts exactly as the plan divides it.

**Per query** of context x: RouteOPT over the deployed set with the context's scores
``(mu_x, c_x)`` (``stageroute.policies.contextual``; context 0: the pooled scores) and the
budget ledger's rules applied to the context's plan (``stageroute.engine.budget.limits``):

    caps  = kappa_x, 0 where the ledger cannot afford the model (rule 1)
    b_x,t = (1 - rho) b_x + (b n - C_n) / W,   within [cheapest affordable mix, H_n]  (rule 2)

With the plan's scores, ``p*_x`` is optimal for this RouteOPT at ``b_x,t = b_x``: ContextLP's
optimality conditions, divided by ``f_x``, are RouteOPT's with the budget price unchanged and the
share prices carried by the caps (a model with a positive share price has ``kappa_xm =
p*_xm``, a binding cap).  Between plans the scores move and RouteOPT follows them within the
context's caps and budget.

**Guarantees.**  Rule 1 holds query by query exactly as for StageRoute: committed spend never
passes ``(1 + eps) b (n + 1)``.  Rule 2's expected committed spend per query, when every
context's budget binds, is ``sum_x f_x b_x,t = (1 - rho) b + (b n - C_n) / W``: the same
integral controller, so slack settles at ``rho W b`` and long-run spend at ``b``.  Where the
plan is infeasible (no plan over the contexts meets the budget) every context routes its part
of the cheapest plan with the nominal budget, and RouteOPT's status says ``budget_infeasible``
where that budget is below the context's cheapest mix.

**Statistics.**  A feedback updates the model's pooled statistics (as for StageRoute) and its
(context, model) cell, whose scores are recomputed at once against the prior snapshot taken at
the last plan: O(1) work per feedback, whatever the number of contexts.  Each plan refreshes
the priors and every cell of the models it covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from schemas import QueryFeatures
from solvers.context_deploy import context_deploy_opt
from solvers.context_lp import context_lp, traffic_average
from solvers.route_opt import BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE
from stageroute.engine.budget import Plan, limits
from stageroute.policies import ModelStats, Scores
from stageroute.policies.context_stats import Cell, Prior
from stageroute.policies.contextual import ContextualMixin

if TYPE_CHECKING:
    from stageroute.engine.state import EngineState

NO_CONTEXT = 0
FloatArray = NDArray[np.float64]


@dataclass(slots=True)
class PlanRow:
    """One context's part of the plan: its cells (aligned with the deployed set; None for
    context 0, which is scored by the pooled statistics), caps ``kappa_x`` and spend ``b_x``.

    ``reward``, ``cost`` and ``risk`` are the cells' scores as RouteOPT and the ledger take
    them, kept in step with the cells (``sync``) so that a query reads them instead of
    walking its cells; ``unobserved`` lists the columns whose cell has no observation yet (their
    risk is the model's own, which moves with every feedback to the model).  A feedback
    replaces a list rather than change it in place: a decision keeps the lists it was made
    with."""

    cells: list[Cell] | None
    caps: list[float]
    budget: float
    reward: list[float]
    cost: list[float]
    risk: list[float]
    unobserved: tuple[int, ...]

    @classmethod
    def of(cls, cells: list[Cell] | None, caps: list[float], budget: float) -> PlanRow:
        if cells is None:
            return cls(None, caps, budget, [], [], [], ())
        return cls(cells, caps, budget, [c.reward for c in cells], [c.cost for c in cells],
                   [c.risk for c in cells],
                   tuple(j for j, c in enumerate(cells) if not c.n))

    def sync(self, j: int) -> None:
        """Column ``j``'s cell changed: new lists with its scores."""
        assert self.cells is not None
        cell = self.cells[j]
        self.reward = self.reward.copy()
        self.reward[j] = cell.reward
        self.cost = self.cost.copy()
        self.cost[j] = cell.cost
        self.risk = self.risk.copy()
        self.risk[j] = cell.risk
        if cell.n and j in self.unobserved:
            self.unobserved = tuple(k for k in self.unobserved if k != j)
        elif not cell.n and j not in self.unobserved:
            self.unobserved = tuple(sorted((*self.unobserved, j)))


@dataclass(slots=True)
class ContextPlan:
    """The plan for the deployed set ``models``; ``rows[x]`` for each context it covers;
    ``column`` maps a model id to its column in the rows."""

    models: list[str]
    rows: list[PlanRow | None]
    infeasible: bool
    column: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.column = {m: j for j, m in enumerate(self.models)}

    def sync(self, context: int, model_id: str) -> None:
        """The cell of (``context``, ``model_id``) changed: its row follows, if it is planned."""
        j = self.column.get(model_id)
        row = self.rows[context] if context < len(self.rows) else None
        if j is not None and row is not None and row.cells is not None:
            row.sync(j)


@dataclass(slots=True)
class ContextBook:
    """A domain's contexts, their (context, model) cells, the priors and the plan."""

    policy: ContextualMixin
    keys: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=lambda: [""])
    counts: list[int] = field(default_factory=lambda: [0])
    cells: list[dict[str, Cell]] = field(default_factory=lambda: [{}])
    priors: dict[str, Prior] = field(default_factory=dict)
    plan: ContextPlan | None = None
    #: Routed queries since the last plan.
    since_plan: int = 0
    #: The undo journal of the event being applied (``begin``, ``rollback``; not state): a
    #: copy of the book taken before the event's first structural change (a new context, a
    #: plan, a deployment), the count ``note`` changed, and the cell a feedback changed.
    journal: bool = False
    before: ContextBook | None = None
    counted: tuple[int, int, int] | None = None
    observed: tuple[int, str, Cell | None, bool] | None = None

    def begin(self, journal: bool) -> None:
        """An event starts (``journal``: record what it changes, for ``rollback``) or ends
        (``begin(False)``: the journal and its copy are let go)."""
        self.journal, self.before, self.counted, self.observed = journal, None, None, None

    def changing(self) -> None:
        """A structural change is about to be made: the journal keeps the book as it was."""
        if self.journal and self.before is None:
            self.before = self.clone()

    def rollback(self) -> ContextBook:
        """The book as it was when the event began (``begin(True)``): this book put back, or
        the copy taken before a structural change."""
        if self.observed is not None:
            context, model_id, saved, had_prior = self.observed
            row = self.cells[context]
            if saved is None:
                row.pop(model_id, None)
            else:
                row[model_id].assign(saved)  # in place: the plan's rows point at the cell
            if not had_prior:
                self.priors.pop(model_id, None)
            if self.plan is not None:
                self.plan.sync(context, model_id)
        book = self.before if self.before is not None else self
        if self.counted is not None:
            index, count, since_plan = self.counted
            book.counts[index], book.since_plan = count, since_plan
        self.begin(False)
        return book

    def note(self, features: QueryFeatures | None) -> int:
        """Count a query and return its context index; a new context makes the plan stale."""
        key = self.policy.context_of(features)
        index = NO_CONTEXT
        if key is not None:
            index = self.keys.get(key, -1)
            if index < 0:
                if len(self.names) - 1 >= self.policy.max_contexts:
                    index = NO_CONTEXT
                else:
                    self.changing()
                    index = len(self.names)
                    self.keys[key] = index
                    self.names.append(key)
                    self.counts.append(1)
                    self.cells.append({})
                    self.plan = None
                    return index
        if self.journal:
            self.counted = (index, self.counts[index], self.since_plan)
        self.counts[index] += 1
        return index

    def stale(self) -> bool:
        """Whether the next query re-plans: ``replan_every`` routed queries per context in the
        plan have passed (see the module docstring; no plan at all also re-plans)."""
        every, plan = self.policy.replan_every, self.plan
        return plan is not None and every > 0 and self.since_plan >= every * len(plan.rows)

    def clone(self) -> ContextBook:
        """A deep copy (cells included; the plan's rows point at the copy's cells).  Lists the
        book only ever replaces (caps, a row's scores, the plan's models) and the frozen priors
        are shared."""
        cells = [{m: c.copy() for m, c in row.items()} for row in self.cells]
        book = ContextBook(self.policy, self.keys.copy(), self.names.copy(), self.counts.copy(),
                           cells, self.priors.copy(), since_plan=self.since_plan)
        plan = self.plan
        if plan is not None:
            rows = [None if r is None else PlanRow(
                None if r.cells is None else [cells[x][m] for m in plan.models],
                r.caps, r.budget, r.reward, r.cost, r.risk, r.unobserved)
                for x, r in enumerate(plan.rows)]
            book.plan = ContextPlan(plan.models, rows, plan.infeasible)
        return book

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "names": self.names[1:],
            "counts": list(self.counts),
            "cells": [{m: c.to_json() for m, c in row.items()} for row in self.cells],
            "priors": {m: p.to_json() for m, p in self.priors.items()},
            "plan": None if plan is None else {
                "models": plan.models, "infeasible": plan.infeasible,
                "rows": [None if r is None else [r.caps, r.budget] for r in plan.rows]},
            "since_plan": self.since_plan,
        }

    @classmethod
    def from_json(cls, policy: ContextualMixin, doc: dict[str, Any]) -> ContextBook:
        book = cls(policy)
        book.names = ["", *doc["names"]]
        book.keys = {name: i for i, name in enumerate(book.names) if i}
        book.counts = list(doc["counts"])
        book.cells = [{m: Cell.from_json(c) for m, c in row.items()} for row in doc["cells"]]
        book.priors = {m: Prior.from_json(p) for m, p in doc["priors"].items()}
        book.since_plan = doc["since_plan"]
        plan = doc["plan"]
        if plan is not None:
            rows: list[PlanRow | None] = []
            for x, row in enumerate(plan["rows"]):
                if row is None:
                    rows.append(None)
                    continue
                cells = None if x == NO_CONTEXT else [book.cells[x][m] for m in plan["models"]]
                rows.append(PlanRow.of(cells, row[0], row[1]))
            book.plan = ContextPlan(plan["models"], rows, plan["infeasible"])
        return book


# --- per query --------------------------------------------------------------------------------


def route_inputs(state: EngineState, book: ContextBook, context: int, query_id: str,
                 ) -> tuple[Scores, list[float], float]:
    """RouteOPT's scores, caps and budget for a query of ``context`` (see the docstring)."""
    plan = book.plan
    if plan is None or book.stale():
        plan = replan(state, book)
    book.since_plan += 1
    row = plan.rows[context] if context < len(plan.rows) else None
    if row is None:
        row = plan.rows[NO_CONTEXT]
        assert row is not None
    deployed = state.deployed
    if row.cells is None:
        scores = state.policy.route_scores(deployed, query_id)
        risk = scores.risk if scores.risk is not None else scores.cost
    else:
        scores = Scores(row.reward, row.cost, False)
        risk = row.risk
        if row.unobserved:  # what the ledger charges for a model the context has not seen
            risk = risk.copy()
            for j in row.unobserved:
                risk[j] = deployed[j].risk
    config = state.config
    if plan.infeasible:
        return scores, row.caps, min(config.budget, row.budget)
    if not (config.budget_control and state.policy.holds_budget):
        return scores, row.caps, row.budget
    planned: Plan = limits(state.ledger, config.budget, row.budget, scores.cost, risk,
                           row.caps, config.overdraft, config.exploration_reserve,
                           config.pacing_window)
    return Scores(scores.reward, scores.cost, False, risk), planned.caps, planned.budget


def observe(state: EngineState, book: ContextBook, context: int, model: ModelStats,
            reward: float, cost: float) -> None:
    """A feedback for a query of ``context`` routed to ``model`` (pooled stats done already)."""
    if context == NO_CONTEXT:
        return
    row = book.cells[context]
    cell = row.get(model.model_id)
    if book.journal:
        book.observed = (context, model.model_id, None if cell is None else cell.copy(),
                         model.model_id in book.priors)
    if cell is None:
        cell = row[model.model_id] = Cell()
    # The cost as the pooled statistics take it (clipped to the model's range; see
    # ``ModelStats.observe``), the dearest cost seen as observed.
    cell.observe(reward, min(max(cost, model.cost_min), model.cost_max))
    if cost > cell.max_c:
        cell.max_c = cost
    prior = book.priors.get(model.model_id)
    if prior is None:
        prior = book.priors[model.model_id] = Prior.of(model)
    book.policy.score_cell(book.names[context], model.model_id, cell, prior,
                           state.config.gamma)
    if book.plan is not None:
        book.plan.sync(context, model.model_id)


# --- plans ------------------------------------------------------------------------------------


def _frequencies(book: ContextBook) -> list[float]:
    """Add-one smoothed frequencies of every context (context 0 included)."""
    counts = book.counts
    total = sum(counts) + len(counts)
    return [(c + 1) / total for c in counts]


def _score_matrix(state: EngineState, book: ContextBook, models: list[ModelStats],
                  pooled: Scores) -> tuple[list[list[float]], list[list[float]]]:
    """Refresh priors and cells of ``models`` in every context; rows of (reward, cost)
    scores, row 0 the pooled ``pooled``."""
    policy, gamma = book.policy, state.config.gamma
    for m in models:
        book.priors[m.model_id] = Prior.of(m)
    mu = [pooled.reward]
    cost = [pooled.cost]
    for x in range(1, len(book.names)):
        row = book.cells[x]
        name = book.names[x]
        rewards, costs = [], []
        for m in models:
            cell = row.get(m.model_id)
            if cell is None:
                cell = row[m.model_id] = Cell()
            policy.score_cell(name, m.model_id, cell, book.priors[m.model_id], gamma)
            rewards.append(cell.reward)
            costs.append(cell.cost)
        mu.append(rewards)
        cost.append(costs)
    return mu, cost


def replan(state: EngineState, book: ContextBook) -> ContextPlan:
    """ContextLP over the deployed set and every context; the plan of the module docstring."""
    book.changing()
    deployed = state.deployed
    pooled = state.policy.deploy_scores(deployed, state.stage)
    mu, cost = _score_matrix(state, book, deployed, pooled)
    freq = _frequencies(book)
    alpha = [m.alpha for m in deployed]
    solution = context_lp(mu, cost, freq, alpha, state.config.budget)
    infeasible = solution.status in (BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE)
    plan = _plan(book, deployed, solution.p, cost, freq, alpha, infeasible)
    book.plan = plan
    book.since_plan = 0
    return plan


def _plan(book: ContextBook, deployed: list[ModelStats], p: FloatArray,
          cost: list[list[float]], freq: list[float], alpha: list[float],
          infeasible: bool) -> ContextPlan:
    """The plan rows of ``p`` (``(contexts, models)``); see the module docstring.  Products
    are elementwise and sums ``math.fsum``: the same floats on every machine."""
    used = traffic_average(np.array(freq), p)
    total = math.fsum(alpha)
    if total < 1.0 - 1e-12:  # shares that cannot carry all traffic are scaled, as ContextLP does
        alpha = [a / total for a in alpha]
    unused = np.array([max(0.0, a - u) for a, u in zip(alpha, used)])
    caps = np.minimum(p + unused, 1.0).tolist()
    spend = [math.fsum(row) for row in (p * np.array(cost)).tolist()]
    rows: list[PlanRow | None] = []
    ids = [m.model_id for m in deployed]
    for x in range(p.shape[0]):
        cells = None if x == NO_CONTEXT else [book.cells[x][i] for i in ids]
        rows.append(PlanRow.of(cells, caps[x], spend[x]))
    return ContextPlan(ids, rows, infeasible)


def deploy(state: EngineState, book: ContextBook, candidates: list[ModelStats], m_max: int,
           ) -> tuple[list[float], list[float], list[float], float, str]:
    """ContextDeployOPT over the live ``candidates``: deploys its set, keeps its plan, and
    returns what the deployment decision records per candidate, averaged over the traffic
    (reward score, cost, the plan's traffic share ``d``), with the plan's value and status."""
    book.changing()
    pooled = state.policy.deploy_scores(candidates, state.stage)
    mu, cost = _score_matrix(state, book, candidates, pooled)
    freq = _frequencies(book)
    alpha = [m.alpha for m in candidates]
    solution = context_deploy_opt(mu, cost, freq, alpha, state.config.budget, m_max)
    selected = list(solution.selected)
    state.set_deployed([candidates[i] for i in selected])
    cost_sel = [[row[i] for i in selected] for row in cost]
    infeasible = solution.status in (BUDGET_INFEASIBLE, CAPS_BUDGET_INFEASIBLE)
    book.plan = _plan(book, state.deployed, solution.p, cost_sel, freq,
                      [alpha[i] for i in selected], infeasible)
    book.since_plan = 0
    f = np.array(freq)
    share = [0.0] * len(candidates)
    for i, used in zip(selected, traffic_average(f, solution.p)):
        share[i] = used
    return (traffic_average(f, np.array(mu)), traffic_average(f, np.array(cost)), share,
            solution.objective, solution.status)

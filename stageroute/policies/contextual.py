"""Contextual policies: statistics per (context, model), with the model's pooled statistics as
their prior, scored for the contextual programs (``solvers.context_lp``, ``context_deploy``).

A *context* is a short key the policy derives from a query's features (``context_key``; the
``context`` parameter says from which: ``task`` by default).  A query without one (features
missing, or the policy's source absent) has *no context* and is routed on the pooled
statistics, exactly as StageRoute routes it.

Per (context x, model m) the engine keeps Welford statistics of the feedback (a ``Cell``).  A
cell's prior is the model's pooled statistics as of the last plan (a ``Prior``: a snapshot, so
that a feedback changes one cell's scores, not one column of cells), with weight

    w_m = min(w, n_m)        w = ``prior_weight`` pseudo-observations; a prior cannot be
                             surer than the n_m observations it comes from

and, with N = w_m + n_xm, the posterior (shrinkage) mean and variance of the reward

    mean_xm = (w_m mean_m + n_xm mean_x) / N
    var_xm  = (w_m (var_m + (mean_m - mean_xm)^2) + n_xm (var_x + (mean_x - mean_xm)^2)) / N

(the variance of the mixture of prior and data, so a context whose mean departs from the
model's widens its own bound).  Reward scores, clipped to [0, 1]:

    contextual          mu_U_xm = mean_xm + 2 f_rad(var_xm, N)    (1 if N = 0: unexplored)
    contextual_greedy   mean_xm                                   (1 if N = 0)
    contextual_oracle   the true mean of (x, m)

with StageRoute's radius ``f_rad(v, n) = sqrt(gamma v / n) + gamma / n``.  A context seen for
the first time (every n_xm = 0) is scored by the pooled statistics alone: the pooled mean with
the confidence of min(w, n_m) observations.

What the bound is: once n_xm >> w it is StageRoute's bound on the context's own observations
(the prior's pull, ``w_m (mean_m - mean_x) / N``, fades as 1 / n_xm, like the radius' range
term).  Before that it is the bound of a hierarchical posterior that believes a context
resembles the model's average with the strength of w observations: that belief is what lets a
new or rare context borrow what is known (an unbiased bound could not use the prior at all),
and it may under-explore a context much better than the model's average until its own
observations outweigh the prior.

Cost (what the budget ledger commits; an estimate, never a lower bound): the model's own cost
estimate ``c_hat_m`` (price prior, then observed) as the prior, with weight w when the model
has a price or observations, none otherwise (then a probe's ``cost_min``):

    c_xm = (w c_hat_m + n_xm mean_c_x) / (w + n_xm)

The ledger's affordability rule charges ``max(c_xm, the dearest cost seen in the cell)`` once
the cell has observations, and the model's own ``ModelStats.risk`` before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from schemas import QueryFeatures
from stageroute.policies.base import ModelStats, Policy, welford
from stageroute.policies.catalog import Greedy, Oracle, StageRoute

CONTEXT_SOURCES: Final = ("task", "tags", "task+tags", "vector")
"""Where a context key comes from: the task; the sorted set of tags; both; or the index of
the feature vector's largest element (``v3``)."""

#: Defaults, cross-validated on folds of the bundled data (``bench.cv_contextual``).
DEFAULT_PRIOR_WEIGHT: Final = 10.0
DEFAULT_REPLAN_EVERY: Final = 50
DEFAULT_MAX_CONTEXTS: Final = 64


def context_key(features: QueryFeatures | None, source: str) -> str | None:
    """The context of a query with ``features`` under ``source`` (``CONTEXT_SOURCES``); None
    when it has none."""
    if features is None:
        return None
    if source == "task":
        return features.task or None
    tags = ",".join(sorted(set(features.tags))) if features.tags else ""
    if source == "tags":
        return tags or None
    if source == "task+tags":
        return f"{features.task or ''}|{tags}" if (features.task or tags) else None
    vector = features.vector
    if not vector:
        return None
    return f"v{max(range(len(vector)), key=vector.__getitem__)}"


@dataclass(slots=True)
class Cell:
    """Feedback of one (context, model): Welford reward statistics, mean and largest cost;
    ``reward`` and ``cost`` are its scores under the current prior (see the module docstring)."""

    n: int = 0
    mean_r: float = 0.0
    m2_r: float = 0.0
    mean_c: float = 0.0
    max_c: float = 0.0
    reward: float = 1.0
    cost: float = 0.0

    def observe(self, reward: float, cost: float) -> None:
        self.n += 1
        n = self.n
        self.mean_r, self.m2_r = welford(n, self.mean_r, self.m2_r, reward)
        self.mean_c += (cost - self.mean_c) / n
        if cost > self.max_c:
            self.max_c = cost

    def copy(self) -> Cell:
        return Cell.from_json(self.to_json())

    def assign(self, other: Cell) -> None:
        """Take ``other``'s values (in place)."""
        for name in Cell.__slots__:
            setattr(self, name, getattr(other, name))

    def to_json(self) -> list[Any]:
        return [self.n, self.mean_r, self.m2_r, self.mean_c, self.max_c, self.reward, self.cost]

    @classmethod
    def from_json(cls, row: list[Any]) -> Cell:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class Prior:
    """A model's pooled statistics when the plan was made: the prior of its cells."""

    n: int
    mean_r: float
    var_r: float
    c_hat: float
    #: Whether ``c_hat`` rests on a price or observations (else it is a probe's cost_min).
    has_cost: bool

    @classmethod
    def of(cls, model: ModelStats) -> Prior:
        n = model.n
        return cls(n, model.mean_r, model.m2_r / n if n else 0.0, model.c_hat,
                   model.price is not None or n > 0)

    def to_json(self) -> list[Any]:
        return [self.n, self.mean_r, self.var_r, self.c_hat, self.has_cost]

    @classmethod
    def from_json(cls, row: list[Any]) -> Prior:
        return cls(*row)


def shrunk_cost(cell: Cell, prior: Prior, weight: float) -> float:
    """``c_xm`` of the module docstring."""
    w = weight if prior.has_cost else 0.0
    total = w + cell.n
    return (w * prior.c_hat + cell.n * cell.mean_c) / total if total > 0 else prior.c_hat


def shrunk_reward(cell: Cell, prior: Prior, weight: float) -> tuple[float, float, float]:
    """``(N, mean_xm, var_xm)`` of the module docstring (N = 0: no information)."""
    w = min(weight, float(prior.n))
    n = cell.n
    total = w + n
    if total <= 0.0:
        return 0.0, 0.0, 0.0
    mean = (w * prior.mean_r + n * cell.mean_r) / total
    d_prior = prior.mean_r - mean
    d_cell = cell.mean_r - mean
    var = (w * (prior.var_r + d_prior * d_prior) + cell.m2_r + n * d_cell * d_cell) / total
    return total, mean, var


class ContextualMixin:
    """What the engine asks of a contextual policy (``Policy.contextual``)."""

    contextual: ClassVar[bool] = True

    def _read_context_params(self, params: dict[str, Any]) -> None:
        source = params.get("context", "task")
        if source not in CONTEXT_SOURCES:
            raise ValueError(f"policy parameter context: expected one of "
                             f"{', '.join(CONTEXT_SOURCES)}, got {source!r}")
        self.context_source: str = source
        weight = params.get("prior_weight", DEFAULT_PRIOR_WEIGHT)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"policy parameter prior_weight: expected a number >= 0, got "
                             f"{weight!r}")
        self.prior_weight: float = float(weight)
        self.replan_every: int = _count(params, "replan_every", DEFAULT_REPLAN_EVERY, 0)
        self.max_contexts: int = _count(params, "max_contexts", DEFAULT_MAX_CONTEXTS, 1)

    def context_of(self, features: QueryFeatures | None) -> str | None:
        return context_key(features, self.context_source)

    def score_cell(self, context: str, model_id: str, cell: Cell, prior: Prior,
                   gamma: float) -> None:
        """Set ``cell.reward`` (optimistic) and ``cell.cost`` from the cell and its prior."""
        weight = self.prior_weight
        cell.cost = shrunk_cost(cell, prior, weight)
        total, mean, var = shrunk_reward(cell, prior, weight)
        if total <= 0.0:
            cell.reward = 1.0
            return
        bonus = 2.0 * (math.sqrt(gamma * var / total) + gamma / total)
        cell.reward = min(max(mean + bonus, 0.0), 1.0)


def _count(params: dict[str, Any], name: str, default: int, least: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"policy parameter {name}: expected an integer >= {least}, got "
                         f"{value!r}")
    return value


class Contextual(ContextualMixin, StageRoute):
    """Contextual StageRoute: per (context, model) reward bounds with the pooled statistics as
    prior, the budget and the shares held over all traffic by a plan over contexts (see
    ``stageroute.engine.context``); no context: StageRoute's pooled scores."""

    name = "contextual"

    def __init__(self, seed: int, params: dict[str, Any]) -> None:
        super().__init__(seed, params)
        self._read_context_params(params)


class ContextualGreedy(ContextualMixin, Greedy):
    """Contextual greedy: the posterior mean per (context, model), no exploration bonus (an
    unexplored model scores 1, so it is tried); the same plan over contexts."""

    name = "contextual_greedy"

    def __init__(self, seed: int, params: dict[str, Any]) -> None:
        super().__init__(seed, params)
        self._read_context_params(params)

    def score_cell(self, context: str, model_id: str, cell: Cell, prior: Prior,
                   gamma: float) -> None:
        cell.cost = shrunk_cost(cell, prior, self.prior_weight)
        total, mean, _ = shrunk_reward(cell, prior, self.prior_weight)
        cell.reward = mean if total > 0.0 else 1.0


class ContextualOracle(ContextualMixin, Oracle):
    """Knows every (context, model)'s true mean reward and cost (``params["context_means"]``:
    context -> model id -> ``[reward, cost]``; a context it does not list, or no context, gets
    the pooled ``params["means"]``) and obeys the same M_max, budget, shares, schedule and plan
    over contexts (with context frequencies counted online, as every contextual policy)."""

    name = "contextual_oracle"

    def __init__(self, seed: int, params: dict[str, Any]) -> None:
        super().__init__(seed, params)
        self._read_context_params(params)
        table = params.get("context_means", {})
        if not isinstance(table, dict):
            raise ValueError("policy contextual_oracle: params['context_means'] must map "
                             "contexts to {model id: [reward, cost]}")
        self.context_means: dict[str, dict[str, tuple[float, float]]] = {
            str(x): {str(m): (float(v[0]), float(v[1])) for m, v in row.items()}
            for x, row in table.items()}

    def score_cell(self, context: str, model_id: str, cell: Cell, prior: Prior,
                   gamma: float) -> None:
        pair = self.context_means.get(context, {}).get(model_id) or self.means.get(model_id)
        if pair is None:
            raise ValueError(f"policy contextual_oracle: no true means for model {model_id!r}")
        cell.reward, cell.cost = pair


def is_contextual(policy: Policy) -> bool:
    return bool(getattr(policy, "contextual", False))

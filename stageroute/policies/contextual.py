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
from typing import Any, ClassVar, Final

from schemas import QueryFeatures
from stageroute.policies.base import Policy
from stageroute.policies.catalog import Greedy, Oracle, StageRoute
from stageroute.policies.context_stats import (
    Cell,
    Prior,
    context_key,
    optimistic_scores,
    shrunk_cost,
    shrunk_reward,
)

CONTEXT_SOURCES: Final = ("task", "tags", "task+tags", "vector")
"""Where a context key comes from: the task; the sorted set of tags; both; or the index of
the feature vector's largest element (``v3``)."""

#: Defaults, cross-validated on folds of the bundled data (``bench.cv_contextual``).
DEFAULT_PRIOR_WEIGHT: Final = 10.0
DEFAULT_REPLAN_EVERY: Final = 50
DEFAULT_MAX_CONTEXTS: Final = 64


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
        optimistic_scores(cell, prior, self.prior_weight, gamma)


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

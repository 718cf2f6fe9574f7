"""What every policy sees and must provide.

A policy turns per-model statistics into *scores*: a reward score and a cost score per model.
The engine feeds the scores to the same two programs for every policy, so every policy obeys the
same concurrency limit, budget and throughput shares:

* DeployOPT(scores, alpha, budget, m_max) picks the deployment set at a stage start;
* RouteOPT(scores of the deployed models, alpha, budget) gives the routing distribution ``p``.

That keeps one invariant for the audit trail whatever the policy: a routing decision's ``p`` is
RouteOPT of its recorded scores, and its model is the inverse-CDF sample of ``p`` at its recorded
draw.  How the scores came from the state is checked by replaying the journal.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from mypy_extensions import mypyc_attr

from solvers import model_bounds


def welford(n: int, mean: float, m2: float, x: float) -> tuple[float, float]:
    """The ``n``-th observation ``x``: ``mean += (x - mean) / n``,
    ``M2 += (x - mean_old) (x - mean_new)``; returns the new ``(mean, M2)``."""
    delta = x - mean
    mean += delta / n
    return mean, m2 + delta * (x - mean)


@dataclass(slots=True)
class ModelStats:
    """One model's registry entry and sufficient statistics (Welford), all costs in USD.

    ``n`` feedbacks; ``mean_r``/``m2_r`` for reward; ``mean_c``/``m2_c`` for cost.  The empirical
    variance is ``m2 / n``.  ``price`` is the published expected cost of one query, if any;
    ``pending`` counts routed queries still awaiting feedback.  ``mu_u``/``c_l``/``c_hat``/``risk``
    cache the bounds, the cost estimate and what the budget ledger charges for one query, of
    the current statistics (``refresh_bounds``, ``add_pending``).
    """

    model_id: str
    alpha: float
    cost_min: float
    cost_max: float
    arrived_seq: int
    price: float | None = None
    expired_seq: int | None = None
    n: int = 0
    mean_r: float = 0.0
    m2_r: float = 0.0
    mean_c: float = 0.0
    m2_c: float = 0.0
    max_c: float = 0.0
    pending: int = 0
    mu_u: float = 1.0
    c_l: float = 0.0
    c_hat: float = 0.0
    risk: float = 0.0

    @property
    def live(self) -> bool:
        return self.expired_seq is None

    def add_pending(self, count: int) -> None:
        """``count`` more (or, negative, fewer) queries await feedback."""
        self.pending += count
        self._refresh_risk()

    def _refresh_risk(self) -> None:
        """``risk``: what the budget ledger's affordability rule charges for one query to this
        model (see ``stageroute.engine.budget``).  Once its cost is known (a price or an
        observation), the dearest it may be, ``max(c_hat, the largest cost observed)``; while
        it is unknown, 0 for the first query (the probe: the one unavoidable risk, bounded by
        ``cost_max``) and ``cost_max`` while that probe awaits feedback."""
        if self.price is not None or self.n:
            self.risk = max(self.c_hat, self.max_c)
        else:
            self.risk = 0.0 if self.pending == 0 else self.cost_max

    def observe(self, reward: float, cost: float) -> None:
        """Welford update: ``mean += (x - mean) / n``, ``M2 += (x - mean_old) (x - mean_new)``.

        The cost is taken clipped to the model's range ``[cost_min, cost_max]`` (the range its
        bounds are clipped to anyway): one absurd observed cost cannot blow the variance up
        (an infinite or huge variance would pin ``c_L`` to ``cost_min``, so that the model looked
        free forever), and the statistics stay finite. The engine's realised spend and the
        dearest cost seen (``max_c``, what the budget ledger charges) still take the cost as
        observed: an absurd cost makes a model look dearer, never cheaper.
        """
        self.max_c = max(self.max_c, cost)
        cost = min(max(cost, self.cost_min), self.cost_max)
        self.n += 1
        n = self.n
        self.mean_r, self.m2_r = welford(n, self.mean_r, self.m2_r, reward)
        self.mean_c, self.m2_c = welford(n, self.mean_c, self.m2_c, cost)

    def refresh_bounds(self, gamma: float, cost_scale: float, price_weight: float) -> None:
        """Refresh ``mu_U = clip(m_r + 2 f_rad, 0, 1)``, ``c_L = clip(m_c - 2 f_rad, c1, c2)``
        and the cost estimate

            c_hat = (w price + n m_c) / (w + n)      with a price (w = ``price_weight``)
            c_hat = m_c                              without one, once observed
            c_hat = c1                               without either (a probe's optimism)

        The cost radius is computed on costs divided by ``cost_scale`` (USD), the unit in which
        the Bernstein range term ``gamma / n`` is meant, then scaled back to USD.
        """
        n = self.n
        price = self.price
        if price is not None:
            self.c_hat = (price_weight * price + n * self.mean_c) / (price_weight + n) \
                if price_weight + n > 0 else price
        else:
            self.c_hat = self.mean_c if n else self.cost_min
        self._refresh_risk()
        if n == 0:  # unexplored: the defined optimistic values, exactly (no unit round trip)
            self.mu_u, self.c_l = 1.0, self.cost_min
            return
        var_r = self.m2_r / n
        var_c = self.m2_c / n
        s = cost_scale
        self.mu_u, c_l = model_bounds(
            n, self.mean_r, var_r, self.mean_c / s, var_c / (s * s), gamma,
            self.cost_min / s, self.cost_max / s,
        )
        # (x / s) * s can land an ulp outside [c1, c2]: clip again in USD.
        self.c_l = min(max(c_l * s, self.cost_min), self.cost_max)

    def to_json(self) -> list[Any]:
        return [self.model_id, self.alpha, self.cost_min, self.cost_max, self.arrived_seq,
                self.price, self.expired_seq, self.n, self.mean_r, self.m2_r, self.mean_c,
                self.m2_c, self.max_c, self.pending, self.mu_u, self.c_l, self.c_hat, self.risk]

    @classmethod
    def from_json(cls, row: list[Any]) -> ModelStats:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-model reward and cost scores; ``cacheable`` if they depend on the statistics only
    (not on the query), so the engine may reuse RouteOPT's answer until the statistics change."""

    reward: list[float]
    cost: list[float]
    cacheable: bool
    #: Per model, the cost the budget ledger's affordability rule charges (None: ``cost``).
    risk: list[float] | None = None


# Compiled in the compiled build (setup.py); its subclasses are not.
@mypyc_attr(allow_interpreted_subclasses=True)
class Policy(ABC):
    """A routing/deployment policy: pure, deterministic given (statistics, seed, key)."""

    name: ClassVar[str]
    #: False for policies that deploy every live model at once (no stage commitment, no M_max).
    commits_to_stages: ClassVar[bool] = True
    #: False for policies that keep their first deployment until every deployed model expired.
    redeploys: ClassVar[bool] = True
    #: False for the paper's algorithm: every query gets the nominal budget, no ledger.
    holds_budget: ClassVar[bool] = True

    def __init__(self, seed: int, params: dict[str, Any]) -> None:
        self.seed = seed
        self.params = params
        #: Re-seeded per key by ``draws.generator`` (cheaper than a new generator per draw).
        self.scratch = np.random.RandomState(0)

    @abstractmethod
    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        """Scores for DeployOPT over the live candidates ``models`` at ``stage``."""

    @abstractmethod
    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        """Scores for RouteOPT over the deployed ``models`` for one query."""


def mean_scores(models: list[ModelStats]) -> Scores:
    """Empirical mean reward (1 while unexplored, so that each model is tried) and the cost
    estimate ``c_hat``."""
    return estimated_costs([m.mean_r if m.n else 1.0 for m in models], models)


def estimated_costs(reward: list[float], models: list[ModelStats]) -> Scores:
    """``reward`` with the cost the spend will follow: ``c_hat`` (price prior, then observed
    mean), and what the ledger charges for each model (``ModelStats.risk``)."""
    return Scores(reward, [m.c_hat for m in models], cacheable=True,
                  risk=[m.risk for m in models])


def optimistic_scores(models: list[ModelStats]) -> Scores:
    """Optimism on reward only: ``(mu_U, c_hat)``."""
    return estimated_costs([m.mu_u for m in models], models)


def paper_scores(models: list[ModelStats]) -> Scores:
    """StageRoute's confidence bounds as in the paper, optimistic on both: ``(mu_U, c_L)``."""
    return Scores([m.mu_u for m in models], [m.c_l for m in models], cacheable=True)


def check_unit(name: str, value: object) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"policy parameter {name}: expected a number in [0, 1], got {value!r}")
    return float(value)

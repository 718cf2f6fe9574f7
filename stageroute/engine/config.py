"""Engine configuration: frozen, validated once at the boundary, stored with every run."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stageroute.policies import POLICIES


class EngineConfig(BaseModel):
    """Everything besides the events and the seed that a decision depends on.

    Costs are USD per query.  ``cost_floor``/``cost_ceiling`` are the default clip range
    ``[c1, c2]`` of the cost lower bound for models whose arrival event gives no price range;
    ``cost_scale`` (default ``cost_ceiling``) is the unit in which the confidence radius is
    computed for costs (see ``solvers.bounds``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    policy: str = "stageroute"
    policy_params: dict[str, Any] = Field(default_factory=dict)
    m_max: int = Field(4, ge=1)
    budget: float = Field(gt=0.0)
    #: Cross-validated on folds of the bundled data (bench/RESULTS.md): a plateau from 0.25 to
    #: 2, 0.5 best held-out; the theory value log(NT/delta) ~ 14 explores far too long.
    gamma: float = Field(0.5, gt=0.0)
    cost_floor: float = Field(0.0, ge=0.0)
    cost_ceiling: float = Field(gt=0.0)
    cost_scale: float | None = Field(None, gt=0.0)
    seed: int = 0
    domain: str = "default"
    #: Pace the per-query budget on realised spend (see ``paced_budget``).
    budget_pacing: bool = True
    #: Queries over which a realised overspend (or underspend) is repaid.
    pacing_window: int = Field(1000, ge=1)
    #: Queries remembered for feedback matching and duplicate detection (oldest forgotten first).
    max_tracked_queries: int = Field(1_000_000, ge=1)
    #: Event-time seconds after which a query is forgotten (None: only the count bound applies).
    query_ttl: float | None = Field(None, gt=0.0)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
        return name

    @model_validator(mode="after")
    def _cost_range(self) -> EngineConfig:
        if self.cost_floor > self.cost_ceiling:
            raise ValueError(
                f"cost_floor ({self.cost_floor}) must not exceed cost_ceiling ({self.cost_ceiling})"
            )
        return self

    @property
    def radius_cost_scale(self) -> float:
        return self.cost_scale if self.cost_scale is not None else self.cost_ceiling


def paced_budget(budget: float, spent: float, n_feedback: int, window: int) -> float:
    """The budget RouteOPT gets for the next query when pacing is on.

    RouteOPT uses optimistic (lower-bound) costs, so while models are being learned the realised
    spend runs above ``b``.  Pacing is an integral controller on the realised deficit
    ``D_n = C_n - b n`` (USD over ``n`` feedbacks): the next query's budget repays it over
    ``window`` queries, ``b_t = b - D_n / window``.  Any persistent bias between the costs RouteOPT
    assumes and the costs it incurs is driven to zero in the long-run average, and the realised
    noise in ``b_t`` stays ``O(sigma / sqrt(window))``.  ``b_t`` is clipped to ``[b / 2, 3 b / 2]``
    so that a burst of expensive feedback can neither starve routing nor license a splurge.
    """
    if n_feedback == 0:
        return budget
    paced = budget - (spent - budget * n_feedback) / window
    return min(max(paced, 0.5 * budget), 1.5 * budget)


def default_gamma(horizon: int, n_models: int, delta: float = 0.1) -> float:
    """``gamma = log(N T / delta)``: the paper's ``Theta(log(NT/delta))`` with constant 1."""
    return math.log(max(n_models, 1) * max(horizon, 1) / delta)

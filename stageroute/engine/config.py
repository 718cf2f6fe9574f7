"""Engine configuration: frozen, validated once at the boundary, stored with every run."""

from __future__ import annotations

import math
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stageroute.policies import POLICIES

ENGINE_VERSION: Final = 2
"""Version of the decision rules.  2: the budget ledger and cost estimates with price priors.
1: optimistic cost bounds with an integral pacer on feedback spend (no longer runnable)."""


class EngineConfig(BaseModel):
    """Everything besides the events and the seed that a decision depends on.

    Costs are USD per query.  ``cost_floor``/``cost_ceiling`` are the default clip range
    ``[c1, c2]`` of the cost lower bound for models whose arrival event gives no price range;
    ``cost_scale`` (default ``cost_ceiling``) is the unit in which the confidence radius is
    computed for costs (see ``solvers.bounds``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    #: The decision rules this config was made for; only the current version can run, an
    #: older one is read so that its stored decisions can still be re-derived row by row.
    engine_version: int = Field(ENGINE_VERSION, ge=1, le=ENGINE_VERSION)
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
    #: Hold realised spend with the budget ledger (``stageroute.engine.budget``); off, every
    #: query is routed with the nominal budget (the paper's setting).
    budget_control: bool = True
    #: Ledger rule 1: committed spend never exceeds the budget line by more than this share.
    #: A quarter of the promised +2 %: the rest absorbs realised-vs-estimated cost, where one
    #: query's long tail can be a few % of a short run's budget at extreme price spreads.
    #: Cross-validated with W and rho (``bench.cv_ledger``, bench/RESULTS.md).
    overdraft: float = Field(0.005, ge=0.0, le=1.0)
    #: Ledger rule 2: queries over which an overrun (or underrun) is repaid.  A fifth of the
    #: 500-query prefix over which the budget promise is judged; cross-validated.
    pacing_window: int = Field(100, ge=1)
    #: Ledger rule 2: share of the budget saved into the exploration reserve (rho W b USD);
    #: cross-validated.
    exploration_reserve: float = Field(0.05, ge=0.0, lt=1.0)
    #: Pseudo-observations the published price counts for in a model's cost estimate.
    price_weight: float = Field(10.0, ge=0.0)
    #: Queries remembered for feedback matching and duplicate detection (oldest forgotten first).
    max_tracked_queries: int = Field(1_000_000, ge=1)
    #: Event-time seconds after which a query is forgotten (None: only the count bound applies).
    query_ttl: float | None = Field(None, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _read_version_1(cls, data: Any) -> Any:
        # Configs stored by engine version 1 have ``budget_pacing`` and no version field.
        if isinstance(data, dict) and "budget_pacing" in data and "engine_version" not in data:
            data = {k: v for k, v in data.items() if k != "budget_pacing"}
            data["engine_version"] = 1
        return data

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


def default_gamma(horizon: int, n_models: int, delta: float = 0.1) -> float:
    """``gamma = log(N T / delta)``: the paper's ``Theta(log(NT/delta))`` with constant 1."""
    return math.log(max(n_models, 1) * max(horizon, 1) / delta)

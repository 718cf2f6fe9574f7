"""The arithmetic of the contextual policies (``stageroute.policies.contextual``, whose
docstring gives the formulas): a query's context key, the (context, model) statistics, their
prior, and the shrunk scores.  Apart from the policies' classes so that the compiled build
(``setup.py``) compiles it: it runs on every feedback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from schemas import QueryFeatures
from stageroute.policies.base import ModelStats, welford


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
    ``reward`` and ``cost`` are its scores under the current prior (see
    ``stageroute.policies.contextual``)."""

    n: int = 0
    mean_r: float = 0.0
    m2_r: float = 0.0
    mean_c: float = 0.0
    max_c: float = 0.0
    reward: float = 1.0
    cost: float = 0.0

    @property
    def risk(self) -> float:
        """What the budget ledger's affordability rule charges once the cell has observations:
        its cost estimate or the dearest cost seen, whichever is higher."""
        return max(self.cost, self.max_c)

    def observe(self, reward: float, cost: float) -> None:
        self.n += 1
        n = self.n
        self.mean_r, self.m2_r = welford(n, self.mean_r, self.m2_r, reward)
        self.mean_c += (cost - self.mean_c) / n
        if cost > self.max_c:
            self.max_c = cost

    def copy(self) -> Cell:
        return Cell(self.n, self.mean_r, self.m2_r, self.mean_c, self.max_c, self.reward,
                    self.cost)

    def assign(self, other: Cell) -> None:
        """Take ``other``'s values (in place)."""
        (self.n, self.mean_r, self.m2_r, self.mean_c, self.max_c, self.reward,
         self.cost) = other.to_json()

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


def optimistic_scores(cell: Cell, prior: Prior, weight: float, gamma: float) -> None:
    """Set ``cell.cost`` to ``c_xm`` and ``cell.reward`` to ``mu_U_xm`` (1 with no
    information), clipped to [0, 1]."""
    cell.cost = shrunk_cost(cell, prior, weight)
    total, mean, var = shrunk_reward(cell, prior, weight)
    if total <= 0.0:
        cell.reward = 1.0
        return
    bonus = 2.0 * (math.sqrt(gamma * var / total) + gamma / total)
    cell.reward = min(max(mean + bonus, 0.0), 1.0)

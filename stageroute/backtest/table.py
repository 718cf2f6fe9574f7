"""A reward table: per-prompt outcomes (score in [0, 1], cost in USD) of every model.

A plain value type; reading one from a file is ``streams.tables.load_table``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class RewardTable:
    """Per-prompt outcomes of every model; ``scores``/``costs`` are (n_rows, n_models), read-only.

    Equality is identity (arrays have no single truth value); compare fields explicitly.
    """

    models: tuple[str, ...]
    sample_ids: tuple[str, ...]
    tasks: tuple[str, ...]
    """``eval_name`` of each row, ``""`` where the table has none."""
    scores: FloatArray
    """Score in [0, 1]; ``NaN`` = missing outcome."""
    costs: FloatArray
    """Cost in USD, finite and >= 0; ``NaN`` = missing."""
    source: str = ""
    """Where the table was read from."""

    def __post_init__(self) -> None:
        shape = (len(self.sample_ids), len(self.models))
        for name in ("scores", "costs"):
            array = np.array(getattr(self, name), dtype=np.float64)  # a private copy
            if array.shape != shape:
                raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        if len(self.tasks) != shape[0]:
            raise ValueError(f"{len(self.tasks)} tasks for {shape[0]} rows")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"duplicate model ids in {self.models}")
        if np.any((self.scores < 0) | (self.scores > 1)):  # NaN compares False: allowed
            raise ValueError("scores outside [0, 1]")
        if np.any(np.isinf(self.costs) | (self.costs < 0)):
            raise ValueError("costs must be finite and >= 0")

    @property
    def n_rows(self) -> int:
        return len(self.sample_ids)

    def mean_reward(self) -> FloatArray:
        """Mean score per model (aligned with ``models``) over its non-missing rows."""
        return _nanmean_columns(self.scores)

    def mean_cost(self) -> FloatArray:
        """Mean cost per model (aligned with ``models``) over its non-missing rows."""
        return _nanmean_columns(self.costs)

    def task_means(self) -> dict[str, tuple[FloatArray, FloatArray]]:
        """Per task (``eval_name``; rows without one are left out): the mean score and the
        mean cost of each model over that task's non-missing rows."""
        tasks = np.array(self.tasks, dtype=object)
        out = {}
        for task in sorted(set(self.tasks) - {""}):
            rows = tasks == task
            out[task] = (_nanmean_columns(self.scores[rows]), _nanmean_columns(self.costs[rows]))
        return out

    def __repr__(self) -> str:
        return f"RewardTable(source={self.source!r}, n_rows={self.n_rows}, models={self.models})"


def _nanmean_columns(values: FloatArray) -> FloatArray:
    present = ~np.isnan(values)
    totals = np.where(present, values, 0.0).sum(axis=0)
    # An all-missing column is NaN (0/0), silently: errstate is thread-safe, unlike
    # silencing nanmean's RuntimeWarning through the global warnings filter.
    with np.errstate(invalid="ignore"):
        return np.asarray(totals / present.sum(axis=0), dtype=np.float64)

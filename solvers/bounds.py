"""Confidence bounds for per-model reward and cost (StageRoute, Sec. 4).

For a model with ``n`` observations, empirical mean ``m`` and empirical variance ``v``
(population form ``M2 / n``), the variance-adaptive (Bernstein-style) confidence radius is::

    f_rad(v, n) = sqrt(gamma * v / n) + gamma / n        (infinite at n = 0)

and the optimistic bounds used by DeployOPT and RouteOPT are::

    mu_U = clip(m_r + 2 f_rad(v_r, n), 0, 1)             reward upper bound, reward in [0, 1]
    c_L  = clip(m_c - 2 f_rad(v_c, n), c1, c2)           cost lower bound, cost in [c1, c2]

``gamma = Theta(log(N T / delta))`` sets the confidence level.  The ``gamma / n`` term is the
range term of Bernstein's inequality for variables with range 1, so costs must be expressed in
units where their range is about 1 (the engine divides USD costs by a cost scale before calling
these functions and multiplies back afterwards).

An unexplored model (n = 0) gets ``mu_U = 1`` and ``c_L = c1``: the most optimistic values, which is
how StageRoute gets new models tried.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def confidence_radius(var: ArrayLike, n: ArrayLike, gamma: float) -> FloatArray:
    """``sqrt(gamma * var / n) + gamma / n`` elementwise; ``inf`` where ``n == 0``."""
    var_a = np.asarray(var, dtype=np.float64)
    n_a = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.sqrt(gamma * var_a / n_a) + gamma / n_a
    return np.where(n_a > 0, radius, np.inf)


def reward_ucb(mean: ArrayLike, radius: ArrayLike) -> FloatArray:
    """``clip(mean + 2 * radius, 0, 1)``; 1 where the radius is infinite."""
    mean_a = np.asarray(mean, dtype=np.float64)
    rad_a = np.asarray(radius, dtype=np.float64)
    return np.where(np.isinf(rad_a), 1.0, np.clip(mean_a + 2.0 * rad_a, 0.0, 1.0))


def cost_lcb(mean: ArrayLike, radius: ArrayLike, c1: ArrayLike, c2: ArrayLike) -> FloatArray:
    """``clip(mean - 2 * radius, c1, c2)``; ``c1`` where the radius is infinite."""
    mean_a = np.asarray(mean, dtype=np.float64)
    rad_a = np.asarray(radius, dtype=np.float64)
    lo = np.broadcast_to(np.asarray(c1, dtype=np.float64), mean_a.shape)
    hi = np.broadcast_to(np.asarray(c2, dtype=np.float64), mean_a.shape)
    return np.where(np.isinf(rad_a), lo, np.minimum(np.maximum(mean_a - 2.0 * rad_a, lo), hi))


def model_bounds(
    n: int,
    mean_r: float,
    var_r: float,
    mean_c: float,
    var_c: float,
    gamma: float,
    c1: float,
    c2: float,
) -> tuple[float, float]:
    """Scalar ``(mu_U, c_L)`` for one model: the same formulas as the vectorised functions.

    The engine refreshes one model's bounds per feedback; at that size plain ``math`` is several
    times faster than numpy, and the unit tests check both agree bit for bit.
    """
    if n <= 0:
        return 1.0, c1
    r_rad = math.sqrt(gamma * var_r / n) + gamma / n
    c_rad = math.sqrt(gamma * var_c / n) + gamma / n
    mu_u = min(max(mean_r + 2.0 * r_rad, 0.0), 1.0)
    c_l = min(max(mean_c - 2.0 * c_rad, c1), c2)
    return mu_u, c_l

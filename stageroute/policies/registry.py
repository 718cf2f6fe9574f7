"""Every policy by name."""

from __future__ import annotations

from typing import Any

from stageroute.policies.base import Policy
from stageroute.policies.catalog import (
    EpsilonGreedy,
    Greedy,
    Oracle,
    StageRoute,
    StageRoutePaper,
    StaticBestAtStart,
    Thompson,
    UCBBwK,
    UniformRandom,
)
from stageroute.policies.contextual import Contextual, ContextualGreedy, ContextualOracle

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (StageRoute, StageRoutePaper, StaticBestAtStart, UCBBwK, Greedy, EpsilonGreedy,
                Thompson, UniformRandom, Oracle, Contextual, ContextualGreedy, ContextualOracle)
}


def make_policy(name: str, seed: int, params: dict[str, Any] | None = None) -> Policy:
    """The policy called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}") from None
    return cls(seed, dict(params or {}))

"""Policies (pure): StageRoute, baselines and the oracle, as scores for the shared programs."""

from stageroute.policies.base import ModelStats, Policy, Scores
from stageroute.policies.draws import generator, sample_index, uniform
from stageroute.policies.registry import POLICIES, make_policy

__all__ = [
    "POLICIES", "ModelStats", "Policy", "Scores", "generator", "make_policy", "sample_index",
    "uniform",
]

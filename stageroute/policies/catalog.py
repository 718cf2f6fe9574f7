"""StageRoute and the baselines it is compared with, all scoring models for the same programs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stageroute.policies.base import (
    ModelStats,
    Policy,
    Scores,
    check_unit,
    estimated_costs,
    mean_scores,
    optimistic_scores,
    paper_scores,
)
from stageroute.policies.draws import beta_sample, generator, uniform


class StageRoute(Policy):
    """StageRoute with a budget users can trust: the reward upper bound ``mu_U`` for DeployOPT
    and RouteOPT, stage commitment, and costs that the spend will follow (``c_hat``: the price
    prior, then the observed mean) held by the budget ledger."""

    name = "stageroute"

    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        return optimistic_scores(models)

    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        return optimistic_scores(models)


class StageRoutePaper(Policy):
    """The paper's algorithm, for comparison: optimistic bounds on both reward and cost
    ``(mu_U, c_L)``, prices ignored, the nominal budget for every query (no ledger).  Its
    realised spend may run over the budget by O(T^(2/3))."""

    name = "stageroute_paper"
    holds_budget = False

    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        return paper_scores(models)

    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        return paper_scores(models)


class StaticBestAtStart(StageRoute):
    """StageRoute's routing, but the first deployment is kept for the whole horizon (it is
    re-made only when every deployed model has expired): the value of re-deploying."""

    name = "static"
    redeploys = False


class UCBBwK(StageRoute):
    """Optimistic routing over every live model at once: no stage commitment and no M_max.
    An upper reference that a platform with a concurrency limit cannot run."""

    name = "ucb_bwk"
    commits_to_stages = False


class Greedy(Policy):
    """Empirical means, no exploration bonus (each new model is tried once)."""

    name = "greedy"

    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        return mean_scores(models)

    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        return mean_scores(models)


def _random_scores(policy: Policy, models: list[ModelStats], key: str) -> Scores:
    rng = generator(policy.seed, key, "random-scores", policy.scratch)
    scores = estimated_costs([float(rng.random_sample()) for _ in models], models)
    return replace(scores, cacheable=False)


class UniformRandom(Policy):
    """Random deployment and random feasible routing: i.i.d. uniform reward scores, mean costs,
    so the budget and shares are still respected."""

    name = "random"

    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        return _random_scores(self, models, f"stage:{stage}")

    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        return _random_scores(self, models, query_id)


class EpsilonGreedy(Greedy):
    """Greedy, but with probability ``epsilon`` (default 0.1) a query or a stage is scored at
    random instead."""

    name = "epsilon_greedy"

    def __init__(self, seed: int, params: dict[str, Any]) -> None:
        super().__init__(seed, params)
        self.epsilon = check_unit("epsilon", params.get("epsilon", 0.1))

    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        key = f"stage:{stage}"
        if uniform(self.seed, key, "explore") < self.epsilon:
            return _random_scores(self, models, key)
        return mean_scores(models)

    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        if uniform(self.seed, query_id, "explore") < self.epsilon:
            return _random_scores(self, models, query_id)
        # Not cacheable: whether the next query explores is decided per query.
        return replace(mean_scores(models), cacheable=False)


class Thompson(Policy):
    """Thompson sampling: reward score ~ Beta(1 + successes, 1 + failures) (fractional rewards
    count fractionally), cost score = mean cost; one posterior sample per query or stage."""

    name = "thompson"

    def _sample(self, models: list[ModelStats], key: str) -> Scores:
        rng = generator(self.seed, key, "thompson", self.scratch)
        reward = [beta_sample(rng, 1.0 + m.n * m.mean_r, 1.0 + m.n * (1.0 - m.mean_r))
                  for m in models]
        return replace(estimated_costs(reward, models), cacheable=False)

    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        return self._sample(models, f"stage:{stage}")

    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        return self._sample(models, query_id)


class Oracle(Policy):
    """Knows every model's true mean reward and cost (``params["means"]``: model id ->
    ``[mean_reward, mean_cost]``) and obeys the same M_max, budget, shares and stage schedule.
    Its RouteOPT objective is the expected reward regret is measured against."""

    name = "oracle"

    def __init__(self, seed: int, params: dict[str, Any]) -> None:
        super().__init__(seed, params)
        means = params.get("means")
        if not isinstance(means, dict) or not means:
            raise ValueError("policy oracle: params['means'] must map model ids to [reward, cost]")
        self.means: dict[str, tuple[float, float]] = {
            str(k): (float(v[0]), float(v[1])) for k, v in means.items()
        }

    def _scores(self, models: list[ModelStats]) -> Scores:
        try:
            pairs = [self.means[m.model_id] for m in models]
        except KeyError as exc:
            raise ValueError(f"policy oracle: no true means for model {exc.args[0]!r}") from None
        return Scores([r for r, _ in pairs], [c for _, c in pairs], cacheable=True)

    def deploy_scores(self, models: list[ModelStats], stage: int) -> Scores:
        return self._scores(models)

    def route_scores(self, models: list[ModelStats], query_id: str) -> Scores:
        return self._scores(models)

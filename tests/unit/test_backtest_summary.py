"""Pre-run warnings, the aggregation over seeds, and the console table a newcomer reads."""

from __future__ import annotations

import io

import pytest

from stageroute.backtest.feasibility import check_settings
from stageroute.backtest.scenario import ModelWindow, Scenario
from stageroute.backtest.seeds import aggregate
from streams.console import print_table

COSTS = {"cheap": 0.001, "mid": 0.002, "dear": 0.01}


def scenario(*windows: ModelWindow, horizon: int = 1000) -> Scenario:
    return Scenario(horizon, windows, (0, 500))


def codes(found: list) -> list[tuple[str, int, int]]:
    return [(w.code, w.start, w.end) for w in found]


def test_settings_that_can_be_met_give_no_warning() -> None:
    s = scenario(ModelWindow("cheap", 0, None), ModelWindow("dear", 0, None))
    assert check_settings(s, COSTS, m_max=2, budget=0.006, default_alpha=0.5) == []


def test_caps_summing_below_one_are_named_with_the_figures() -> None:
    s = scenario(*(ModelWindow(m, 0, None) for m in COSTS))
    [warning] = check_settings(s, COSTS, m_max=4, budget=0.01, default_alpha=0.1)
    assert warning.code == "caps_below_one"
    assert "all queries" in warning.message and "sum to 0.3 < 1" in warning.message


def test_budget_below_the_cheapest_mix_is_found_per_span() -> None:
    # Until the cheap model arrives at 600, the cheapest mix is mid/dear at 0.5 each.
    s = scenario(ModelWindow("mid", 0, None), ModelWindow("dear", 0, None),
                 ModelWindow("cheap", 600, None))
    found = check_settings(s, COSTS, m_max=2, budget=0.003, default_alpha=0.5)
    assert codes(found) == [("budget_below_live_models", 0, 600)]
    assert "queries 0 to 599 (60% of the horizon)" in found[0].message
    assert "$0.006000" in found[0].message


def test_a_scenario_whose_only_model_exceeds_the_budget() -> None:
    s = scenario(ModelWindow("dear", 0, None))
    [warning] = check_settings(s, COSTS, m_max=4, budget=0.005, default_alpha=1.0)
    assert warning.code == "only_model_over_budget" and "dear" in warning.message


def test_a_span_without_models_is_named() -> None:
    s = scenario(ModelWindow("cheap", 0, 400), ModelWindow("mid", 700, None))
    found = check_settings(s, COSTS, m_max=2, budget=0.01, default_alpha=1.0)
    assert codes(found) == [("no_live_model", 400, 700)]


def row(policy: str, seed: int, reward: float, **extra: object) -> dict[str, object]:
    return {"policy": policy, "seed": seed, "run_id": f"{policy}-{seed}", "queries": 100,
            "avg_reward": reward, "avg_cost": 0.001, "budget_use": 1.0,
            "pct_of_oracle": 100 * reward / 0.8, "regret": 80 - 100 * reward,
            "queries_per_second": 1000.0, "decision_status": {"optimal": 100},
            "deployments": [], "deploys_per_stage": 1.0, **extra}


def test_aggregate_means_spreads_flags_and_run_ids() -> None:
    out = aggregate([row("greedy", 0, 0.70), row("greedy", 1, 0.74, over_budget=True),
                     row("greedy", 2, 0.72)])
    assert out["avg_reward"] == pytest.approx(0.72)
    assert out["avg_reward_sd"] == pytest.approx(0.02)
    assert (out["avg_reward_min"], out["avg_reward_max"]) == (0.70, 0.74)
    assert out["queries"] == 100 and isinstance(out["queries"], int)
    assert out["run_ids"] == ["greedy-0", "greedy-1", "greedy-2"] and out["run_id"] is None
    assert out["decision_status"] == {"optimal": 300}
    assert out["over_budget"] is True


def summary(**extra: object) -> dict[str, object]:
    oracle = aggregate([row("oracle", 0, 0.8, pct_of_oracle=None, regret=None),
                        row("oracle", 1, 0.8, pct_of_oracle=None, regret=None)])
    policies = [aggregate([row("stageroute", 0, 0.79), row("stageroute", 1, 0.78)]),
                aggregate([row("greedy", 0, 0.75, **extra), row("greedy", 1, 0.7)])]
    return {"horizon": 100, "seeds": [0, 1], "stages": 5, "m_max": 4, "alpha": 0.5,
            "budget": 0.001, "beta": 0.3, "gamma": 0.5, "scenario": "test", "oracle": oracle,
            "policies": policies, "invocation_id": "0123456789abcdef", "warning_count": 0}


def printed(doc: dict[str, object]) -> str:
    out = io.StringIO()
    print_table(doc, out)
    return out.getvalue()


def test_table_has_spread_legend_speed_apart_and_every_run_id() -> None:
    text = printed(summary())
    lines = text.splitlines()
    assert lines[0].startswith("100 queries x 2 seeds (0, 1), mean ± sd")  # no blank line
    titles = next(line for line in lines if line.startswith("policy"))
    assert "q/s" not in titles and "regret" in titles
    assert "0.7850 ± 0.0071" in text
    assert "regret: expected reward lost to the oracle, summed over the 100 queries" in " ".join(
        text.split())
    assert "speed, queries/s per process" in text
    for policy in ("oracle", "stageroute", "greedy"):  # the oracle's too, 8 characters each
        assert f"seed 0 {f'{policy}-0'[:8]}  seed 1 {f'{policy}-1'[:8]}" in text
    assert "over budget" not in text


def test_over_budget_policy_is_marked_and_explained() -> None:
    text = printed(summary(over_budget=True))
    greedy = next(line for line in text.splitlines() if line.startswith("greedy"))
    assert "% *" in greedy  # on the budget use column
    assert "% oracle is not a like-for-like comparison" in " ".join(text.split())

"""Settings that cannot be met, found before a backtest runs (pure).

The scenario splits the horizon into spans with a fixed pool of live models; for each span:

* ``caps_below_one``: the ``min(M_max, #live)`` largest shares ``alpha`` sum below 1, so no
  routing distribution respects them: every decision there is ``caps_infeasible`` (the caps
  are scaled up), and its reward is not comparable with a run whose caps hold;
* ``only_model_over_budget``: a single live model whose mean cost exceeds the budget;
* ``budget_below_live_models``: the cheapest mix the live models allow under their shares
  (cheapest first, each up to ``alpha``) costs more than the budget on average;
* ``no_live_model``: no model is live, so queries there are dead-lettered.

Costs are the table's mean costs per model: what the models cost on average, not per query.
Each warning is one line naming the span of queries and the figures behind it. The budget
issue extends this module (e.g. with the paper's budget convention); keep each check a small
function of one span.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from stageroute.backtest.scenario import ModelWindow, Scenario

_SLACK = 1e-9  # tolerance of the sums below


@dataclass(frozen=True, slots=True)
class SettingWarning:
    """A setting that cannot be met, over queries ``start`` to ``end - 1``."""

    code: str
    message: str
    start: int
    end: int

    def as_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "start": self.start,
                "end": self.end}


@dataclass(frozen=True, slots=True)
class Span:
    """Queries ``start`` to ``end - 1``, with the same live models (and their shares)."""

    start: int
    end: int
    live: tuple[ModelWindow, ...]


Check = Callable[[Span, "Limits"], "tuple[str, str] | None"]


@dataclass(frozen=True, slots=True)
class Limits:
    m_max: int
    budget: float
    default_alpha: float
    mean_cost: Mapping[str, float]

    def alpha(self, window: ModelWindow) -> float:
        return self.default_alpha if window.alpha is None else window.alpha


def spans(scenario: Scenario) -> list[Span]:
    """The horizon cut at every arrival and expiry."""
    cuts = {0, scenario.horizon}
    for w in scenario.windows:
        cuts.update(t for t in (w.arrive, w.expire) if t is not None and t < scenario.horizon)
    edges = sorted(cuts)
    return [Span(a, b, tuple(w for w in scenario.windows
                             if w.arrive <= a and (w.expire is None or w.expire > a)))
            for a, b in pairwise(edges)]


def _no_live_model(span: Span, limits: Limits) -> tuple[str, str] | None:
    if span.live:
        return None
    return "no_live_model", "no model is live: these queries are dead-lettered"


def _caps_below_one(span: Span, limits: Limits) -> tuple[str, str] | None:
    shares = sorted((limits.alpha(w) for w in span.live), reverse=True)
    k = min(limits.m_max, len(shares))
    total = sum(shares[:k])
    if not shares or total >= 1.0 - _SLACK:
        return None
    return "caps_below_one", (
        f"the throughput shares of the {k} model(s) that can be deployed sum to {total:g} < 1 "
        f"(alpha {shares[0]:g}, m_max {limits.m_max}): every routing decision is "
        "caps_infeasible and the caps are exceeded, so rewards are not comparable")


def _over_budget(span: Span, limits: Limits) -> tuple[str, str] | None:
    priced = sorted((limits.mean_cost[w.model_id], limits.alpha(w), w.model_id)
                    for w in span.live if w.model_id in limits.mean_cost)
    if not priced:
        return None
    if len(span.live) == 1:
        cost, _, model = priced[0]
        if cost > limits.budget * (1.0 + _SLACK):
            return "only_model_over_budget", (
                f"the only live model, {model}, costs ${cost:.6f} per query on average, above "
                f"the budget ${limits.budget:.6f}")
        return None
    need, cost = 1.0, 0.0
    for mean, share, _ in priced[:limits.m_max]:
        take = min(share, need)
        cost += take * mean
        need -= take
    if need > _SLACK:  # the caps cannot carry all traffic: _caps_below_one says so
        return None
    if cost > limits.budget * (1.0 + _SLACK):
        return "budget_below_live_models", (
            f"the cheapest mix the live models allow under their shares costs ${cost:.6f} per "
            f"query on average, above the budget ${limits.budget:.6f}: spend will exceed it")
    return None


CHECKS: tuple[Check, ...] = (_no_live_model, _caps_below_one, _over_budget)


def check_settings(scenario: Scenario, mean_cost: Mapping[str, float], *, m_max: int,
                   budget: float, default_alpha: float,
                   checks: Sequence[Check] = CHECKS) -> list[SettingWarning]:
    """Every setting that cannot be met, one warning per check and run of adjacent spans."""
    limits = Limits(m_max, budget, default_alpha, mean_cost)
    found: list[SettingWarning] = []
    for check in checks:
        for span in spans(scenario):
            hit = check(span, limits)
            if hit is None:
                continue
            code, text = hit
            last = found[-1] if found else None
            if last is not None and last.code == code and last.end == span.start:
                found[-1] = SettingWarning(code, last.message, last.start, span.end)
            else:
                found.append(SettingWarning(code, text, span.start, span.end))
    horizon = scenario.horizon
    return [SettingWarning(w.code, f"{_where(w.start, w.end, horizon)}: {w.message}", w.start,
                           w.end) for w in found]


def _where(start: int, end: int, horizon: int) -> str:
    if start == 0 and end == horizon:
        return "all queries"
    return f"queries {start:,} to {end - 1:,} ({(end - start) / horizon:.0%} of the horizon)"

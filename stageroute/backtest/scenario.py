"""Backtest scenarios: when models arrive and retire, and where the stages start (pure).

A schedule document (JSON) lists models with ``arrive`` and ``expire`` times, as fractions of
the horizon (``"unit": "fraction"``, the default) or as query indices (``"unit": "query"``);
``expire`` may be null.  Optional per model: ``alpha``, ``cost_min``, ``cost_max``, ``price``
(expected USD per query; when absent the backtest may supply list prices, see
``events_before``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas import Event, ModelArrived, ModelExpired, StageBoundary


class ScenarioError(ValueError):
    """A schedule that cannot be used; the message names the source and the entry."""


@dataclass(frozen=True, slots=True)
class ModelWindow:
    model_id: str
    arrive: int  # query index at which the model arrives (before that query)
    expire: int | None  # query index at which it retires, None = never
    alpha: float | None = None
    cost_min: float | None = None
    cost_max: float | None = None
    price: float | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """The exogenous events of a backtest, by query index."""

    horizon: int
    windows: tuple[ModelWindow, ...]
    stage_starts: tuple[int, ...]

    def events_before(self, default_alpha: float, prices: Mapping[str, float] | None = None,
                      ) -> dict[int, list[Event]]:
        """Events to apply before query ``t``, keyed by ``t``: expiries, then arrivals, then the
        stage boundary, so a stage starting at ``t`` sees the pool as it is at ``t``.  A
        model's arrival carries its scheduled price, else its entry in ``prices``, else none
        (its cost is learned)."""
        prices = prices or {}
        at: dict[int, list[Event]] = {}
        for w in self.windows:
            if w.expire is not None and w.expire < self.horizon:
                at.setdefault(w.expire, []).append(
                    ModelExpired(model_id=w.model_id, time=float(w.expire)))
        for w in self.windows:
            if w.arrive < self.horizon:
                at.setdefault(w.arrive, []).append(ModelArrived(
                    model_id=w.model_id, time=float(w.arrive),
                    alpha=default_alpha if w.alpha is None else w.alpha,
                    cost_min=w.cost_min, cost_max=w.cost_max,
                    price=w.price if w.price is not None else prices.get(w.model_id)))
        for k, start in enumerate(self.stage_starts):
            at.setdefault(start, []).append(StageBoundary(stage=k, time=float(start)))
        return at


def equal_stages(horizon: int, stages: int | None = None) -> tuple[int, ...]:
    """Start indices of ``K`` equal stages; ``K = ceil(T^(1/3))`` by default, the paper's
    balance of learning within stages against discovery across them."""
    k = stages if stages is not None else math.ceil(horizon ** (1.0 / 3.0) - 1e-9)
    if k < 1 or k > horizon:
        raise ScenarioError(f"stages: need 1 <= K <= horizon ({horizon}), got {k}")
    return tuple(sorted({(i * horizon) // k for i in range(k)}))


def all_live(models: Sequence[str], horizon: int, stages: int | None = None) -> Scenario:
    """Every model live from the start, none retiring."""
    return Scenario(horizon, tuple(ModelWindow(m, 0, None) for m in models),
                    equal_stages(horizon, stages))


def parse_schedule(doc: Any, models: Sequence[str], horizon: int, source: str,
                   stages: int | None = None) -> Scenario:
    """Scenario from a schedule document; every scheduled model must be in ``models``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ScenarioError(f"{source}: expected an object with a 'models' list")
    unit = doc.get("unit", "fraction")
    if unit not in ("fraction", "query"):
        raise ScenarioError(f"{source}: unit must be 'fraction' or 'query', got {unit!r}")
    known = set(models)
    windows: list[ModelWindow] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["models"]):
        where = f"{source}: models[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model_id"), str):
            raise ScenarioError(f"{where}: expected an object with a string 'model_id'")
        model_id = entry["model_id"]
        if model_id not in known:
            raise ScenarioError(f"{where}: model {model_id!r} is not in the data "
                                f"(known: {', '.join(sorted(known))})")
        if model_id in seen:
            raise ScenarioError(f"{where}: model {model_id!r} is scheduled twice")
        seen.add(model_id)
        arrive = _index(entry.get("arrive", 0), unit, horizon, f"{where}.arrive")
        expire = (None if entry.get("expire") is None
                  else _index(entry["expire"], unit, horizon, f"{where}.expire"))
        if expire is not None and expire <= arrive:
            raise ScenarioError(f"{where}: expire ({expire}) must come after arrive ({arrive})")
        alpha, cost_min, cost_max, price = (
            _optional_number(entry, key, where)
            for key in ("alpha", "cost_min", "cost_max", "price"))
        if cost_min is not None and cost_max is not None and cost_max < cost_min:
            raise ScenarioError(f"{where}: cost_max ({cost_max}) must be >= cost_min "
                                f"({cost_min})")
        if price is not None and not ((cost_min is None or price >= cost_min)
                                      and (cost_max is None or price <= cost_max)):
            raise ScenarioError(f"{where}: price ({price}) must be within [cost_min, cost_max]")
        windows.append(ModelWindow(model_id, arrive, expire, alpha, cost_min, cost_max, price))
    if not windows:
        raise ScenarioError(f"{source}: the schedule lists no models")
    return Scenario(horizon, tuple(windows), equal_stages(horizon, stages))


def _index(value: Any, unit: str, horizon: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScenarioError(f"{where}: expected a number, got {value!r}")
    if unit == "fraction":
        if not 0.0 <= value <= 1.0:
            raise ScenarioError(f"{where}: a fraction of the horizon must be in [0, 1], "
                                f"got {value}")
        return round(value * horizon)
    if value < 0 or value != int(value):
        raise ScenarioError(f"{where}: a query index must be a whole number >= 0, got {value}")
    return int(value)


def _optional_number(entry: dict[str, Any], key: str, where: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScenarioError(f"{where}.{key}: expected a number, got {value!r}")
    if key == "alpha" and not 0.0 < value <= 1.0:
        raise ScenarioError(f"{where}.alpha: a throughput share must be in (0, 1], got {value}")
    if value < 0.0:
        raise ScenarioError(f"{where}.{key}: a cost must be >= 0, got {value}")
    return float(value)

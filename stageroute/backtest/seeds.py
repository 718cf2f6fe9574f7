"""One policy's summaries over several seeds, as one row (pure).

A number becomes the mean over seeds, with ``<key>_sd`` its sample standard deviation (None for
one seed) and ``<key>_min``/``<key>_max``; a flag (``over_budget``, ...) is true if it is on any
seed; run ids are listed in seed order (``run_ids``; ``run_id`` is set only for one seed);
decision status counts are added up. A seed's other details stay in its own summary.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

#: Per-seed figures that are not averaged.
_PER_SEED = frozenset({"seed", "deployments", "run_id"})


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from the per-seed rows of one policy (in seed order; a key missing from some
    rows counts as None there)."""
    if not rows:
        raise ValueError("no rows to aggregate")
    first = rows[0]
    out: dict[str, Any] = {"policy": first["policy"], "seeds": [r["seed"] for r in rows],
                           "run_ids": [r.get("run_id") for r in rows],
                           "run_id": first.get("run_id") if len(rows) == 1 else None}
    keys = dict.fromkeys(k for r in rows for k in r)  # every key, in first-seen order
    for key in keys:
        if key in _PER_SEED or key in out:
            continue
        values = [r.get(key) for r in rows]
        value = next((v for v in values if v is not None), None)
        if isinstance(value, bool):
            out[key] = any(bool(v) for v in values)
        elif isinstance(value, int | float):
            out.update(_numbers(key, values))
        elif isinstance(value, dict):
            merged: dict[str, Any] = {}
            for v in values:
                for k, n in (v or {}).items():
                    merged[k] = merged.get(k, 0) + n
            out[key] = merged
        elif all(v == value for v in values):
            out[key] = value
    return out


def _numbers(key: str, values: list[Any]) -> dict[str, Any]:
    finite = [float(v) for v in values
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if len(finite) < len(values) or not finite:
        return {key: None, f"{key}_sd": None, f"{key}_min": None, f"{key}_max": None}
    if all(v == values[0] for v in values):  # e.g. queries: keep it whole
        return {key: values[0], f"{key}_sd": 0.0 if len(values) > 1 else None,
                f"{key}_min": values[0], f"{key}_max": values[0]}
    return {key: statistics.fmean(finite),
            f"{key}_sd": statistics.stdev(finite) if len(finite) > 1 else None,
            f"{key}_min": min(finite), f"{key}_max": max(finite)}

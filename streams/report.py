"""Backtest output: the console table and the PNG/HTML report."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stageroute.backtest.runner import RunResult

COLUMNS = [("policy", "policy", "{}"), ("avg_reward", "reward", "{:.4f}"),
           ("avg_cost", "cost $", "{:.6f}"), ("budget_use", "budget use", "{:.1%}"),
           ("pct_of_oracle", "% oracle", "{:.1f}"),
           ("pct_of_contextual_oracle", "% ctx oracle", "{:.1f}"), ("regret", "regret", "{:.0f}"),
           ("deploys_per_stage", "deploys/stage", "{:.2f}"), ("queries_per_second", "q/s",
                                                              "{:,.0f}")]


def _rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The oracles first (the contextual one when it ran), then the policies."""
    oracles = [{**summary["oracle"], "policy": "oracle"}]
    if summary.get("contextual_oracle"):
        oracles.append(summary["contextual_oracle"])
    return [*oracles, *summary["policies"]]


def print_table(summary: dict[str, Any]) -> None:
    rows = _rows(summary)
    for row in rows:
        row["deploys_per_stage"] = len(row["deployments"]) / summary["stages"]
    cells = [[fmt.format(row[key]) if row.get(key) is not None else "-"
              for key, _, fmt in COLUMNS] for row in rows]
    over = [bool(row.get("over_budget")) for row in rows]
    budget_col = [key for key, _, _ in COLUMNS].index("budget_use")
    for c, flagged in zip(cells, over):
        c[budget_col] += " *" if flagged else "  "
    widths = [max(len(title), *(len(c[i]) for c in cells))
              for i, (_, title, _) in enumerate(COLUMNS)]
    print(f"\n{summary['horizon']:,} queries, {summary['stages']} stages, m_max "
          f"{summary['m_max']}, alpha {summary['alpha']:g}, budget ${summary['budget']:.6f} "
          f"(beta {summary['beta']:g}), gamma {summary['gamma']:g}, seed {summary['seed']}; "
          f"{summary['scenario']}")
    print("  ".join(t.rjust(w) if i else t.ljust(w)
                    for i, ((_, t, _), w) in enumerate(zip(COLUMNS, widths))))
    for c in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w)
                        for i, (v, w) in enumerate(zip(c, widths))))
    if any(over):
        print("* over budget: realised cost above budget + 2%; its % oracle is not a "
              "like-for-like comparison")
    infeasible = [f"{row['policy']} {row['budget_infeasible']:,}" for row in rows
                  if row.get("budget_infeasible")]
    if infeasible:
        print(f"decisions with the budget below every deployed mix (routed to the cheapest): "
              f"{', '.join(infeasible)}")
    for row in summary["policies"]:
        if row.get("run_id"):
            print(f"audit run {row['run_id']}: {row['policy']}")


def _figure(summary: dict[str, Any], oracle: RunResult, results: Sequence[RunResult],
            models: Sequence[str]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    focus = next((r for r in results if r.policy == "stageroute"), results[0])
    fig, axes = plt.subplots(3, 1, figsize=(10, 12), constrained_layout=True)
    t = np.arange(1, oracle.queries + 1)

    ax = axes[0]
    for r in results:
        ax.plot(t, np.cumsum(oracle.expected - r.expected), label=r.policy)
    ax.set(title="Cumulative regret against the oracle (expected reward)", xlabel="query",
           ylabel="regret")
    ax.legend()
    ax.grid(alpha=0.3)

    ax = axes[1]
    starts = sorted({s for s, _, _ in focus.deployments})
    grid = np.zeros((len(models), max(starts) + 1 if starts else 1))
    for stage, _, selected in focus.deployments:
        grid[:, stage] = [1.0 if m in selected else 0.0 for m in models]
    ax.imshow(grid, aspect="auto", cmap="Greens", interpolation="nearest", vmin=0, vmax=1)
    ax.set_yticks(range(len(models)), labels=models, fontsize=8)
    ax.set(title=f"Deployment timeline ({focus.policy}): deployed models per stage",
           xlabel="stage")

    ax = axes[2]
    for r in (oracle, *results):
        answered = ~np.isnan(r.costs)
        running = np.cumsum(np.where(answered, r.costs, 0.0)) / np.maximum(
            np.cumsum(answered), 1)
        ax.plot(t, running, label=r.policy)
    ax.axhline(summary["budget"], color="black", linestyle="--", label="budget")
    ax.set(title="Realised average cost per query vs budget", xlabel="query", ylabel="USD")
    ax.set_ylim(0, 2.5 * summary["budget"])
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def write_report(path: str, summary: dict[str, Any], oracle: RunResult,
                 results: Sequence[RunResult], models: Sequence[str]) -> None:
    """PNG: the three plots.  HTML: the plots inline plus the summary table."""
    fig = _figure(summary, oracle, results, models)
    target = Path(path)
    if target.suffix.lower() == ".png":
        fig.savefig(target, dpi=110)
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    image = base64.b64encode(buffer.getvalue()).decode()
    rows = _rows(summary)
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in COLUMNS[:-2])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt.format(r[k]) if r.get(k) is not None else '-')}"
                         "</td>" for k, _, fmt in COLUMNS[:-2]) + "</tr>" for r in rows)
    target.write_text(
        "<!doctype html><meta charset='utf-8'><title>stageroute backtest</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "td,th{padding:.2em .6em;text-align:right}</style>"
        f"<h1>Backtest</h1><p>{html.escape(str(summary['horizon']))} queries, "
        f"{summary['stages']} stages, m_max {summary['m_max']}, budget "
        f"${summary['budget']:.6f} (beta {summary['beta']}), {html.escape(summary['scenario'])}"
        f"</p><table><tr>{head}</tr>{body}</table>"
        f"<img alt='regret, deployments and spend' style='width:100%' "
        f"src='data:image/png;base64,{image}'>\n")

"""The backtest's console output: a progress line while it runs, then the table, its legend,
the speed and the audit run ids."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: (key, title, format): the quality columns; speed is printed apart from them.
COLUMNS = [("avg_reward", "reward", "{:.4f}"), ("avg_cost", "cost $", "{:.6f}"),
           ("budget_use", "budget use", "{:.1%}"), ("pct_of_oracle", "% oracle", "{:.1f}"),
           ("regret", "regret", "{:,.0f}"), ("deploys_per_stage", "deploys/stage", "{:.2f}")]
#: Spread shown (as ± standard deviation over seeds) for these columns.
SPREAD = {"avg_reward": "{:.4f}", "budget_use": "{:.1%}", "pct_of_oracle": "{:.1f}",
          "pct_of_contextual_oracle": "{:.1f}", "regret": "{:,.0f}"}
#: Shown after "% oracle" when the contextual oracle ran (the data has tasks).
CONTEXTUAL_COLUMN = ("pct_of_contextual_oracle", "% ctx oracle", "{:.1f}")
OVER_BUDGET_MARK = "*"
WIDTH = 92  # the table's own width, about


@contextmanager
def progress_line(runs: int, quiet: bool = False,
                  ) -> Iterator[Callable[[list[str], int], None] | None]:
    """A one-line progress display on stderr (runs done, and each active run's queries)."""
    if quiet:
        yield None
        return
    from tqdm import tqdm

    # disable=None: no progress line when stderr is not a terminal (logs, CI).
    with tqdm(total=runs, unit="run", file=sys.stderr, leave=False, dynamic_ncols=True,
              disable=None, bar_format="backtest: {n_fmt}/{total_fmt} runs {bar:12} {elapsed}"
              "  {desc}") as bar:

        def show(active: list[str], done: int) -> None:
            bar.n = done
            bar.set_description_str("; ".join(active), refresh=False)
            bar.refresh()

        yield show


def _cell(row: dict[str, Any], key: str, fmt: str, spread: bool) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    cell = fmt.format(value)
    sd = row.get(f"{key}_sd")
    if spread and key in SPREAD and sd is not None:
        cell += " ± " + SPREAD[key].format(sd).lstrip("-")
    if key == "budget_use":  # marked when over budget (on any seed)
        cell += f" {OVER_BUDGET_MARK}" if row.get("over_budget") else "  "
    return cell


def _rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The oracles first (the contextual one when it ran), then the policies."""
    contextual = summary.get("contextual_oracle")
    return [summary["oracle"], *([contextual] if contextual else []), *summary["policies"]]


def _columns(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    if not summary.get("contextual_oracle"):
        return COLUMNS
    at = [k for k, _, _ in COLUMNS].index("pct_of_oracle") + 1
    return [*COLUMNS[:at], CONTEXTUAL_COLUMN, *COLUMNS[at:]]


def table_lines(summary: dict[str, Any]) -> list[str]:
    """The header line, the column titles and one line per policy (oracles first)."""
    rows = _rows(summary)
    columns = _columns(summary)
    seeds = summary["seeds"]
    spread = len(seeds) > 1
    cells = [[r["policy"], *(_cell(r, k, f, spread) for k, _, f in columns)] for r in rows]
    titles = ["policy", *(t for _, t, _ in columns)]
    widths = [max(len(t), *(len(c[i]) for c in cells)) for i, t in enumerate(titles)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    seed_text = (f"seed {seeds[0]}" if len(seeds) == 1
                 else f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± sd")
    header = (f"{summary['horizon']:,} queries x {seed_text}; {summary['scenario']}; "
              f"{summary['stages']} stages, m_max {summary['m_max']}, alpha "
              f"{summary['alpha']:g}, budget ${summary['budget']:.6f}/query (beta "
              f"{summary['beta']:g}), gamma {summary['gamma']:g}")
    return [header, line(titles), *(line(c) for c in cells)]


def legend_lines(summary: dict[str, Any]) -> list[str]:
    horizon = summary["horizon"]
    lines = [
        "reward, cost $: realised means per answered query; budget use: cost / budget.",
        "% oracle: reward / the oracle's reward on the same seed (the oracle knows every "
        "model's true mean, same limits).",
        *(["% ctx oracle: reward / the contextual oracle's reward on the same seed (it knows "
           "every model's true mean per task, same limits, and routes each query by its "
           "task)."] if summary.get("contextual_oracle") else []),
        f"regret: expected reward lost to the oracle, summed over the {horizon:,} queries "
        "(reward units, from the true means; lower is better).",
        "deploys/stage: deployment decisions per stage (1.00: one at each stage start).",
    ]
    if len(summary["seeds"]) > 1:
        lines.append("± : standard deviation over the seeds; every figure is a mean over "
                     "them.")
    if any(r.get("over_budget") for r in summary["policies"]):
        lines.append(f"{OVER_BUDGET_MARK} over budget: realised cost above budget + 2% (on at "
                     "least one seed); its % oracle is not a like-for-like comparison.")
    infeasible = [f"{r['policy']} {r['budget_infeasible']:,.0f}"
                  for r in _rows(summary) if r.get("budget_infeasible")]
    if infeasible:
        lines.append("decisions with the budget below every deployed mix (routed to the "
                     f"cheapest), per run: {', '.join(infeasible)}.")
    if summary.get("warning_count"):
        lines.append(f"{summary['warning_count']} warning(s) about the settings, printed "
                     "above: figures under settings that cannot be met are not comparable.")
    return lines


def print_table(summary: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    rows = _rows(summary)
    header, *table = table_lines(summary)
    print(textwrap.fill(header, WIDTH, subsequent_indent="  "), file=out)
    for line in table:
        print(line, file=out)
    print("", file=out)
    for line in legend_lines(summary):
        print(textwrap.fill(line, WIDTH, subsequent_indent="  "), file=out)
    speeds = " · ".join(f"{r['policy']} {r['queries_per_second']:,.0f}" for r in rows
                        if r.get("queries_per_second") is not None)
    audited = any(r.get("run_ids") and r["run_ids"][0] for r in rows)
    if speeds:
        print(textwrap.fill(f"speed, queries/s per process"
                            f"{' (audit writes included)' if audited else ''}: {speeds}",
                            WIDTH, subsequent_indent="  "), file=out)
    if audited:
        print("", file=out)
        print("audit runs (stageroute audit verify RUN; the first 8 characters are enough):",
              file=out)
        width = max(len(r["policy"]) for r in rows)
        for r in rows:
            ids = "  ".join(f"seed {s} {(rid or '-')[:8]}"
                            for s, rid in zip(r["seeds"], r["run_ids"]))
            print(f"  {r['policy'].ljust(width)}  {ids}", file=out)
        if summary.get("invocation_id"):
            print(f"backtest {summary['invocation_id'][:8]}: all its runs with "
                  f"stageroute audit runs --backtest {summary['invocation_id'][:8]}", file=out)

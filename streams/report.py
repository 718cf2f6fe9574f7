"""The backtest report: one self-contained interactive HTML file (plotly, its JavaScript
embedded: no network needed to open it).

Sections: the summary table with its legend and warnings; cumulative regret (zoomed on the
policies close to the oracle, the others marked at the edge); realised spend per query
against the budget (zoomed on the budget band); reward over time; one deployment timeline
per policy on the same query axis (model availability shaded, stage starts marked, each
deployed model's share of the stage's traffic as colour); the configuration and every audit
run id. A policy has one colour everywhere.

Curves are means over the seeds (a band shows the seeds' range); the deployment timelines show
the first seed.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from stageroute.backtest.runner import RunResult
from stageroute.backtest.scenario import Scenario
from streams.console import legend_lines, table_lines

POLICY_COLOURS = {
    "oracle": "#222222", "stageroute": "#1f77b4", "greedy": "#ff7f0e", "random": "#8c564b",
    "epsilon_greedy": "#2ca02c", "thompson": "#9467bd", "static": "#e377c2",
    "ucb_bwk": "#17becf",
}
SPARE_COLOURS = ("#d62728", "#bcbd22", "#7f7f7f", "#393b79", "#637939")
MAX_POINTS = 800  # per curve: enough for the eye, small enough for the file
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"

Grouped = dict[int, tuple[RunResult, list[RunResult]]]


def colours(policies: Sequence[str]) -> dict[str, str]:
    """One colour per policy, the same in every chart (and every report)."""
    spare = iter(SPARE_COLOURS * (1 + len(policies) // len(SPARE_COLOURS)))
    return {p: POLICY_COLOURS.get(p) or next(spare) for p in policies}


def _grid(horizon: int) -> np.ndarray:
    step = max(1, math.ceil(horizon / MAX_POINTS))
    grid = np.arange(step - 1, horizon, step)
    return grid if grid[-1] == horizon - 1 else np.append(grid, horizon - 1)


def _runs_of(grouped: Grouped, policy: str) -> list[RunResult]:
    out = []
    for oracle, others in grouped.values():
        out += [oracle] if policy == "oracle" else [r for r in others if r.policy == policy]
    return out


def _band(fig: Any, x: np.ndarray, curves: np.ndarray, name: str, colour: str,
          dash: str | None = None, band: bool = True) -> None:
    """The mean of ``curves`` (seeds x points) as a line, their range as a light band."""
    import plotly.graph_objects as go

    mean = curves.mean(axis=0)
    group = name
    if band and len(curves) > 1:
        fig.add_trace(go.Scatter(x=x, y=curves.max(axis=0), mode="lines", line_width=0,
                                 hoverinfo="skip", showlegend=False, legendgroup=group))
        fig.add_trace(go.Scatter(x=x, y=curves.min(axis=0), mode="lines", line_width=0,
                                 fill="tonexty", fillcolor=_alpha(colour, 0.10),
                                 hoverinfo="skip", showlegend=False, legendgroup=group))
    fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", name=name, legendgroup=group,
                             line={"color": colour, "width": 2, "dash": dash},
                             hovertemplate=f"{name}<br>query %{{x:,}}<br>%{{y:.4g}}"
                                           "<extra></extra>"))


def _alpha(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _edge_notes(fig: Any, notes: list[tuple[str, str]], y: float, top: bool) -> None:
    """Policies whose curve leaves the y-range, one line each, at the right of that edge."""
    if notes:
        fig.add_annotation(
            x=1.0, xref="paper", y=y, yref="y", xanchor="right", yanchor="top" if top
            else "bottom", showarrow=False, align="right", bgcolor="rgba(255,255,255,0.8)",
            text="<br>".join(f"<span style='color:{c}'>{html.escape(t)}</span>"
                             for t, c in notes))


def _layout(fig: Any, title: str, y_title: str, horizon: int, height: int = 430) -> None:
    fig.update_layout(
        title={"text": title, "x": 0.01, "font": {"size": 17}}, height=height,
        # Fixed margins: the three line charts' query axes line up, one under the other.
        margin={"l": 90, "r": 190, "t": 50, "b": 50, "autoexpand": False},
        font={"family": FONT, "size": 13},
        template="plotly_white", hovermode="x unified",
        legend={"x": 1.01, "y": 1, "xanchor": "left"})
    fig.update_xaxes(title_text="query", tickformat=",d", range=[0, horizon])
    fig.update_yaxes(title_text=y_title)


def regret_figure(grouped: Grouped, policies: Sequence[str], palette: dict[str, str],
                  horizon: int) -> Any:
    """Cumulative expected regret; the y-range fits the policies near the best one, so that
    they are not flat lines under a far worse one (which is marked at the top edge)."""
    import plotly.graph_objects as go

    x = _grid(horizon)
    fig = go.Figure()
    finals = {}
    for policy in policies:
        curves = np.array([np.cumsum(oracle.expected - r.expected)[x]
                           for oracle, others in grouped.values()
                           for r in others if r.policy == policy])
        finals[policy] = float(curves.mean(axis=0)[-1])
        _band(fig, x, curves, policy, palette[policy])
    best = min(max(v, 0.0) for v in finals.values())
    close = [v for v in finals.values() if v <= max(4.0 * best, best + 0.02 * horizon)]
    top = max(max(close), 1.0) * 1.25
    _edge_notes(fig, [(f"{p}: off the scale, {v:,.0f} at the end ↑", palette[p])
                      for p, v in finals.items() if v > top], top, top=True)
    fig.update_yaxes(range=[min(0.0, *(min(0.0, v) for v in finals.values())) - 0.05 * top,
                            top])
    _layout(fig, "Cumulative regret against the oracle (expected reward, lower is better)",
            "regret (reward units)", horizon)
    return fig


def spend_figure(grouped: Grouped, policies: Sequence[str], palette: dict[str, str],
                 horizon: int, budget: float) -> Any:
    """Realised average cost per answered query so far, against the budget; the y-range is
    the budget +-10%, so the band of budget + 2% is readable (the first queries' swings and
    policies far below or above are cut off; those are marked at the edge)."""
    import plotly.graph_objects as go

    x = _grid(horizon)
    low, high = budget * 0.9, budget * 1.1
    fig = go.Figure()
    notes: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    # The budget and its 2% tolerance as legend entries (annotations would sit on the curves).
    fig.add_trace(go.Scatter(x=[0, horizon, horizon, 0, 0],
                             y=[budget, budget, budget * 1.02, budget * 1.02, budget],
                             fill="toself", fillcolor="rgba(214,39,40,0.10)", line_width=0,
                             mode="lines", name="budget + 2%", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[0, horizon], y=[budget, budget], mode="lines",
                             name=f"budget ${budget:.6f}", hoverinfo="skip",
                             line={"color": "#d62728", "dash": "dash", "width": 1.5}))
    for policy in ("oracle", *policies):
        curves = []
        for r in _runs_of(grouped, policy):
            answered = ~np.isnan(r.costs)
            running = (np.cumsum(np.where(answered, r.costs, 0.0))
                       / np.maximum(np.cumsum(answered), 1))
            curves.append(running[x])
        stacked = np.array(curves)
        # No band: a policy that underspends on one seed would wash over the budget band.
        _band(fig, x, stacked, policy, palette[policy],
              dash="dot" if policy == "oracle" else None, band=False)
        mean = stacked.mean(axis=0)
        final, later = float(mean[-1]), mean[x >= horizon // 10]
        outside = float(np.mean((later < low) | (later > high)))
        if outside > 0.25:
            above = float(np.mean(later > high)) > float(np.mean(later < low))
            notes[above].append((f"{policy}: off the scale for {outside:.0%} of the run, ends "
                                 f"at {final / budget:.0%} of the budget {'↑' if above else '↓'}",
                                 palette[policy]))
    _edge_notes(fig, notes[True], high, top=True)
    _edge_notes(fig, notes[False], low, top=False)
    fig.update_yaxes(range=[low, high], tickformat="$.6f")
    _layout(fig, "Realised spend per query against the budget (running average)",
            "USD per query", horizon)
    return fig


def reward_figure(grouped: Grouped, policies: Sequence[str], palette: dict[str, str],
                  horizon: int) -> Any:
    """Expected reward per query, as a moving average over 1/40 of the horizon."""
    import plotly.graph_objects as go

    window = max(1, horizon // 40)
    x = _grid(horizon)
    x = x[x >= window - 1]
    fig = go.Figure()
    for policy in ("oracle", *policies):
        curves = []
        for r in _runs_of(grouped, policy):
            sums = np.cumsum(np.insert(r.expected, 0, 0.0))
            moving = (sums[window:] - sums[:-window]) / window  # moving[i] ends at i+window-1
            curves.append(moving[x - (window - 1)])
        _band(fig, x, np.array(curves), policy, palette[policy],
              dash="dot" if policy == "oracle" else None)
    _layout(fig, f"Reward over time (expected reward, moving average over {window:,} queries)",
            "expected reward", horizon)
    return fig


def deployment_figure(grouped: Grouped, policies: Sequence[str], models: Sequence[str],
                      scenario: Scenario) -> Any:
    """Per policy (first seed): which models were deployed in each stage and what share of
    the stage's queries each got; grey where a model was available; stage starts dotted."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    seed = next(iter(grouped))
    oracle, others = grouped[seed]
    runs = [oracle, *(r for r in others if r.policy in policies)]
    horizon = scenario.horizon
    order = [w.model_id for w in sorted(scenario.windows, key=lambda w: (w.arrive, w.model_id))]
    order += [m for m in models if m not in order]
    index = {m: i for i, m in enumerate(models)}
    edges = np.array([*scenario.stage_starts, horizon])
    fig = make_subplots(rows=len(runs), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[f"{r.policy} (seed {seed})" for r in runs])
    for row, r in enumerate(runs, start=1):
        z = np.full((len(order), len(edges) - 1), np.nan)
        deployed = {(stage, m) for stage, _, selected, _ in r.deployments for m in selected}
        for k, (a, b) in enumerate(pairwise(edges)):
            counts = np.bincount(r.chosen[a:b][r.chosen[a:b] >= 0], minlength=len(models))
            for i, m in enumerate(order):
                share = counts[index[m]] / max(b - a, 1)
                if share > 0 or (k, m) in deployed:
                    z[i, k] = share
        fig.add_trace(go.Heatmap(
            # Starts at a visible blue: a deployed model that got no traffic is not blank.
            x=edges, y=order, z=z, zmin=0, zmax=1, xgap=1, ygap=1,
            colorscale=[[0.0, "#c6dbef"], [0.5, "#4292c6"], [1.0, "#08306b"]],
            showscale=row == 1, hoverongaps=False,
            colorbar={"title": {"text": "traffic share<br>in the stage"}, "len": 0.3,
                      "y": 1, "yanchor": "top", "tickformat": ".0%"},
            hovertemplate="%{y}<br>queries %{x:,}<br>share %{z:.1%}<extra></extra>"),
            row=row, col=1)
        for w in scenario.windows:
            end = horizon if w.expire is None else w.expire
            fig.add_shape(type="rect", x0=w.arrive, x1=end, y0=order.index(w.model_id) - 0.5,
                          y1=order.index(w.model_id) + 0.5, fillcolor="rgba(0,0,0,0.09)",
                          line_width=0, layer="below", row=row, col=1)
            if w.expire is not None and w.expire < horizon:
                fig.add_trace(go.Scatter(
                    x=[w.expire], y=[w.model_id], mode="markers", showlegend=False,
                    marker={"symbol": "x-thin", "size": 11, "line": {"width": 2,
                                                                      "color": "#d62728"}},
                    hovertemplate=f"{w.model_id} retires at query {w.expire:,}<extra></extra>"),
                    row=row, col=1)
        for start in scenario.stage_starts[1:]:
            fig.add_vline(x=start, line={"color": "rgba(0,0,0,0.25)", "width": 1, "dash": "dot"},
                          row=row, col=1)
        fig.update_yaxes(autorange="reversed", tickfont={"size": 11}, row=row, col=1)
    fig.update_xaxes(range=[0, horizon], tickformat=",d")
    fig.update_xaxes(title_text="query (dotted: stage starts)", row=len(runs), col=1)
    fig.update_layout(
        title={"text": "Deployments: traffic share per model and stage (grey: model "
                       "available, red ×: model retires)", "x": 0.01, "font": {"size": 17}},
        height=110 + 30 * len(order) * len(runs), template="plotly_white",
        font={"family": FONT, "size": 13}, margin={"l": 250, "r": 150, "t": 70, "b": 50})
    return fig


def _table_html(summary: dict[str, Any]) -> str:
    header, titles, *rows = table_lines(summary)
    return (f"<p class='setup'>{html.escape(header)}</p>"
            f"<pre class='table'>{html.escape(titles)}\n"
            + "\n".join(html.escape(r) for r in rows) + "</pre>"
            + "<ul class='legend'>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in legend_lines(summary))
            + "</ul>")


def _config_html(summary: dict[str, Any], grouped: Grouped) -> str:
    keys = ("data", "scenario", "horizon", "stages", "order", "feedback_delay", "beta",
            "budget", "m_max", "alpha", "gamma", "budget_control", "prices", "seeds",
            "invocation_id")
    shown = {**summary, "budget": f"${summary['budget']:.6f} per query"}
    config = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(shown.get(k)))}"
                     "</td></tr>" for k in keys)
    runs = ""
    for seed, (oracle, others) in grouped.items():
        for r in (oracle, *others):
            runs += (f"<tr><td>{html.escape(r.policy)}</td><td>{seed}</td>"
                     f"<td><code>{html.escape(r.run_id or 'not audited (--no-audit)')}</code>"
                     "</td></tr>")
    return ("<div class='cols'><div><h2>Configuration</h2><table class='kv'>" + config
            + "</table></div><div><h2>Audit runs</h2><p>Prove one with <code>stageroute "
            "audit verify RUN</code>.</p><table class='kv'><tr><th>policy</th><th>seed</th>"
            "<th>run id</th></tr>" + runs + "</table></div></div>")


STYLE = f"""
body {{ font-family: {FONT}; color: #222; max-width: 1200px; margin: 24px auto;
       padding: 0 16px; line-height: 1.45; }}
h1 {{ font-size: 26px; margin-bottom: 4px; }}
h2 {{ font-size: 19px; margin-top: 28px; }}
.setup {{ color: #444; }}
pre.table {{ font-size: 14px; background: #f6f8fa; padding: 12px; border-radius: 6px;
            overflow-x: auto; }}
ul.legend {{ font-size: 14px; color: #444; }}
.warning {{ background: #fff4e5; border-left: 4px solid #ff9800; padding: 8px 12px;
           margin: 8px 0; }}
.caption {{ font-size: 14px; color: #555; margin: 0 0 8px 0; }}
table.kv {{ border-collapse: collapse; font-size: 14px; }}
table.kv th, table.kv td {{ text-align: left; padding: 3px 10px 3px 0;
                          border-bottom: 1px solid #eee; vertical-align: top; }}
.cols {{ display: flex; gap: 48px; flex-wrap: wrap; }}
"""

CAPTIONS = {
    "regret": "Sum over queries of the oracle's expected reward minus the policy's (from "
              "the table's true mean rewards). The line is the mean over seeds, the band "
              "their range. Drag to zoom, double-click to see everything.",
    "spend": "Realised cost per answered query, averaged from the first query on, mean "
             "over seeds; the budget is an average over the run. The first queries swing "
             "widely and are cut off: double-click to see them.",
    "reward": "The expected reward of each routing decision (its distribution over models, "
              "weighted by their true mean rewards), smoothed.",
    "deployments": "Colour: the share of the stage's queries routed to the model (blue, "
                   "however light: deployed; blank: not deployed). Grey background: the "
                   "model is available (arrived, not retired): a model that retired looks "
                   "different from one not chosen.",
}


def write_report(path: str | Path, summary: dict[str, Any], grouped: Grouped,
                 models: Sequence[str], scenario: Scenario) -> None:
    """Write the report to ``path`` (HTML)."""
    from plotly.offline import get_plotlyjs

    policies = [r["policy"] for r in summary["policies"]]
    palette = colours(["oracle", *policies])
    horizon = scenario.horizon
    figures = [
        ("regret", regret_figure(grouped, policies, palette, horizon)),
        ("spend", spend_figure(grouped, policies, palette, horizon, summary["budget"])),
        ("reward", reward_figure(grouped, policies, palette, horizon)),
        ("deployments", deployment_figure(grouped, policies, models, scenario)),
    ]
    parts = [f"<div class='figure'>{fig.to_html(full_html=False, include_plotlyjs=False, config={'displaylogo': False, 'responsive': True})}"  # noqa: E501
             f"<p class='caption'>{html.escape(CAPTIONS[name])}</p></div>"
             for name, fig in figures]
    warnings = "".join(f"<div class='warning'>warning: {html.escape(w['message'])}</div>"
                       for w in summary.get("warnings", []))
    Path(path).write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>stageroute backtest</title>"
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        "<h1>StageRoute backtest</h1>" + warnings + _table_html(summary)
        + "".join(parts) + _config_html(summary, grouped) + "</body></html>\n")

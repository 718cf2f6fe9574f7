"""The HTML report renders: one self-contained file, four interactive figures, one colour per
policy in every figure, the configuration and every run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from streams.report import colours


def test_report_is_self_contained_with_consistent_colours(tmp_path: Path) -> None:
    report, out = tmp_path / "report.html", tmp_path / "s.json"
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "backtest", "--no-audit", "--quiet", "--horizon",
         "600", "--seeds", "2", "--policies", "stageroute,greedy,random", "--alpha", "0.1",
         "--report", str(report), "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = report.read_text()
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js is inlined: no CDN
    figures = [json.loads(m) for m in re.findall(
        r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', page, flags=re.S)]
    assert len(figures) == 4  # regret, spend, reward, deployments
    palette = colours(["oracle", "stageroute", "greedy", "random"])
    for traces in figures[:3]:
        named = {t["name"]: t["line"]["color"] for t in traces
                 if t.get("name") in palette and t.get("line", {}).get("color")}
        assert named and all(palette[name] == colour for name, colour in named.items())
    heatmaps = [t for t in figures[3] if t["type"] == "heatmap"]
    assert len(heatmaps) == 4  # the oracle and each policy
    assert "caps_below_one" not in page and "sum to 0.4 &lt; 1" in page  # the warning, shown
    summary = json.loads(out.read_text())
    assert summary["warning_count"] == 1
    assert "not audited (--no-audit)" in page

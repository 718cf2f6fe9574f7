"""The pure StageRoute domain: engine, policies, backtest, verification (no I/O)."""

from solvers.compiled import check

#: Whether this install runs the compiled engine (``setup.py``).
COMPILED = check(__file__)

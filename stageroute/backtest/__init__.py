"""Backtests: scenarios (pure) and the runner that replays a reward table through the engine."""

"""Backtests (pure): the reward table, scenarios, the engine driver and the runner that
replays a table through the engine for each policy."""

"""The pure, event-sourced StageRoute engine."""

from stageroute.engine.config import EngineConfig, default_gamma
from stageroute.engine.core import Output, apply, fold
from stageroute.engine.state import EngineState, initial_state, restore, snapshot

__all__ = [
    "EngineConfig", "EngineState", "Output", "apply", "default_gamma", "fold", "initial_state",
    "restore", "snapshot",
]

"""CLI sub-commands: thin wiring from options to the engine and the adapters."""

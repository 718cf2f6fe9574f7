"""A live worker's settings, shared by both runtimes."""

from __future__ import annotations

from dataclasses import dataclass

from stageroute.engine import EngineConfig
from streams import topics


@dataclass(frozen=True)
class WorkerSettings:
    bootstrap: str
    db_url: str
    run_name: str
    config: EngineConfig
    batch_size: int = 2000
    batch_within: float = 0.02
    snapshot_every: int = 10_000
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    group: str | None = None
    datadir: str | None = None
    session_timeout: float = 10.0
    topic_prefix: str = topics.DEFAULT_PREFIX
    stall_after: float = 60.0
    """Seconds without a commit, while input is pending, after which /health says degraded."""
    probe_every: float = 2.0
    """Seconds between reachability probes of the database and the broker."""
    max_lag_records: int = 20_000
    """Input records applied and published but not yet stored, at most (the trail's lag)."""
    max_lag_seconds: float = 5.0
    """No batch is applied while the oldest unstored one is older than this."""

    @property
    def names(self) -> topics.TopicNames:
        return topics.TopicNames(self.topic_prefix)

    @property
    def group_id(self) -> str:
        return self.group or f"stageroute-worker-{self.run_name}"

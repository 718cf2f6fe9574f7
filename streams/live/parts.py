"""What both runtimes build the same way: metrics and health, the processor, the output
producer, the checkpoint, the web server and the reachability probes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy import text

from streams.audit.store import AuditStore
from streams.live.checkpoint import Checkpoint, OutputProducer, kafka_committed
from streams.live.health import Health, Metrics, probe_forever, quiet_repeats, serve
from streams.live.processor import Processor
from streams.live.settings import WorkerSettings


@dataclass
class Parts:
    settings: WorkerSettings
    store: AuditStore
    metrics: Metrics
    health: Health
    processor: Processor
    output: OutputProducer
    checkpoint: Checkpoint
    consumed: dict[tuple[str, int], int] = field(default_factory=dict)
    """Next offset to consume per partition (for lag)."""
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    def note_consumed(self, topic: str, partition: int, offset: int) -> None:
        self.consumed[(topic, partition)] = offset + 1

    def lag_from(self, highwaters: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        """Tell /health and /metrics how to read the pending input."""

        def lag() -> dict[tuple[str, int], int]:
            try:
                ends = highwaters()
            except Exception:  # not started or rebalancing: no figure
                return {}
            return {tp: max(0, end - self.consumed.get(tp, end)) for tp, end in ends.items()}

        self.health.lag = lag

    async def start(self) -> None:
        """Serve /health and /metrics and start the probes (call on the event loop)."""
        s = self.settings
        quiet_repeats()
        self._runner = await serve(self.health, s.web_host, s.web_port, extra=lambda: {
            "run": s.run_name, "domains": sorted(self.processor.runs),
            "partitions": sorted(f"{t}:{p}" for t, p in self.processor.epochs)})
        self._tasks = [
            asyncio.ensure_future(probe_forever(self.health, "broker", self.output.probe,
                                                s.probe_every)),
            asyncio.ensure_future(probe_forever(self.health, "database", self._probe_db,
                                                s.probe_every)),
        ]

    async def _probe_db(self) -> None:
        def ping() -> None:
            with self.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        await asyncio.get_running_loop().run_in_executor(None, ping)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.checkpoint.close()
        if self._runner is not None:
            await self._runner.cleanup()


def build_parts(settings: WorkerSettings, store: AuditStore) -> Parts:
    metrics = Metrics()
    health = Health(metrics, settings.stall_after)
    processor = Processor(store, settings.run_name, settings.config, metrics,
                          settings.snapshot_every)
    output = OutputProducer(settings.bootstrap, settings.names)
    checkpoint = Checkpoint(processor, output, health,
                            kafka_committed(settings.bootstrap, settings.group_id))
    return Parts(settings, store, metrics, health, processor, output, checkpoint)

"""What both runtimes build the same way: metrics and health, the processor, the output
producer, the checkpoint, the web server and the reachability probes."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy import text

from streams.audit.store import AuditStore
from streams.live.checkpoint import Checkpoint, Offsets, OutputProducer
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
    offsets: Offsets
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    """End offset per watched partition, as last read."""
    group_committed: dict[tuple[str, int], int] = field(default_factory=dict)
    """The group's committed offset per watched partition, as last read."""
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet done per watched partition (as of the last read of the end
        offsets): past what this worker's batches finished and what the group committed."""
        done = dict(self.checkpoint.done)
        return {tp: max(0, end - max(done.get(tp, 0), self.group_committed.get(tp, 0)))
                for tp, end in self.ends.items()}

    async def _watch_ends(self) -> None:
        """Read end offsets every probe interval, for lag and /health's stall rule (the
        runtimes' own high-water marks go stale when a consumer is stuck). Watched: the
        partitions this worker owns or, when it owns none (a consumer that fell out of its
        group and did not come back, say), every input partition."""
        inputs = self.settings.names.inputs
        while True:
            with contextlib.suppress(Exception):  # the broker probe reports an outage
                tps = sorted(dict(self.processor.epochs))
                tps = tps or await self.offsets.partitions(inputs)
                self.group_committed = await self.offsets.committed(tps)
                self.ends = await self.offsets.ends(tps)
            await asyncio.sleep(self.settings.probe_every)

    async def start(self) -> None:
        """Serve /health and /metrics and start the probes (call on the event loop)."""
        s = self.settings
        quiet_repeats()
        self._runner = await serve(self.health, s.web_host, s.web_port, extra=lambda: {
            "run": s.run_name, "domains": sorted(self.processor.runs),
            "partitions": sorted(f"{t}:{p}" for t, p in self.processor.epochs),
            "lag": {f"{t}:{p}": n for (t, p), n in sorted(self.lag().items()) if n}})
        self._tasks = [
            asyncio.ensure_future(probe_forever(self.health, "broker", self.output.probe,
                                                s.probe_every)),
            asyncio.ensure_future(probe_forever(self.health, "database", self._probe_db,
                                                s.probe_every)),
            asyncio.ensure_future(self._watch_ends()),
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
        await self.offsets.close()
        if self._runner is not None:
            await self._runner.cleanup()


def build_parts(settings: WorkerSettings, store: AuditStore) -> Parts:
    metrics = Metrics()
    health = Health(metrics, settings.stall_after)
    processor = Processor(store, settings.run_name, settings.config, metrics,
                          settings.snapshot_every)
    output = OutputProducer(settings.bootstrap, settings.names)
    offsets = Offsets(settings.bootstrap, settings.group_id)
    checkpoint = Checkpoint(processor, output, health, offsets.committed,
                            settings.max_lag_records, settings.max_lag_seconds)
    parts = Parts(settings, store, metrics, health, processor, output, checkpoint, offsets)
    health.lag = parts.lag
    return parts

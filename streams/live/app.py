"""The faust runtime of the live worker: one agent over every input topic.

Only the consume loop lives here; the commit protocol is ``streams.live.checkpoint`` (shared
with the aiokafka runtime). The agent takes a batch of records (``stream.take_events``) and runs
``Checkpoint.process`` on it, which publishes its decisions at once; the agent then awaits the
batch's transaction, because when its loop moves on faust acks the batch's events and commits
their offsets in the background (``take_events`` acks in its ``finally``), and offsets must be
committed only after the batch's transaction and the broker's acks of its outputs. So this
runtime does not pipeline batches: its trail lags by at most the batch in flight. faust's own
exactly-once is not used: exactly-once in effect comes from the database (positions under the
owner's fence).

Partitions: faust's assignor gives partition ``p`` of every input topic to the same worker (the
topics are co-partitioned), so a domain has one owner; the app's ``on_partitions_assigned`` /
``on_partitions_revoked`` signals claim and drop partitions. faust waits for the agent's
in-flight batch before it revokes.

``concurrency=1``: records are applied in the order consumed, and no gaps in acked offsets
(faust-streaming issue #606). /health and /metrics are ``streams.live.health``'s own aiohttp
server (faust's web server is off), as in the aiokafka runtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faust

from streams.audit.store import AuditStore
from streams.live.parts import Parts, build_parts
from streams.live.processor import Message
from streams.live.settings import WorkerSettings

log = logging.getLogger("stageroute.worker")


class WorkerApp(faust.App):
    """A faust app that stops the shared parts on the way out."""

    parts: Parts

    async def on_stop(self) -> None:
        await super().on_stop()
        await self.parts.stop()


def build_app(settings: WorkerSettings, store: AuditStore) -> WorkerApp:
    datadir = settings.datadir or str(Path(tempfile.gettempdir()) / "stageroute-faust")
    app = WorkerApp(
        settings.group_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        autodiscover=False,
        datadir=datadir,
        key_serializer="raw",
        value_serializer="raw",
        topic_allow_declare=False,  # topics are created by `stageroute topics create`
        topic_disable_leader=True,  # no __assignor-__leader topic: nothing uses it
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 3),
        stream_buffer_maxsize=max(4096, 2 * settings.batch_size),
        web_enabled=False,
    )
    parts = app.parts = build_parts(settings, store)
    checkpoint = parts.checkpoint
    inputs_names = set(settings.names.inputs)
    inputs = app.topic(*settings.names.inputs, key_serializer="raw", value_serializer="raw")

    def ours(tps: Any) -> list[tuple[str, int]]:
        return [(tp.topic, tp.partition) for tp in tps if tp.topic in inputs_names]

    @app.on_partitions_assigned.connect
    async def claim(sender: Any, assigned: Any, **kwargs: Any) -> None:
        await checkpoint.on_assigned(ours(assigned))

    @app.on_partitions_revoked.connect
    async def drop(sender: Any, revoked: Any, **kwargs: Any) -> None:
        await checkpoint.on_revoked(ours(revoked))

    async def handle(batch: list[Message]) -> None:
        try:
            await (await checkpoint.process(batch))
        except Exception as exc:
            parts.health.failed = repr(exc)
            log.exception("batch failed; exiting so a restart resumes from the database")
            # Crash-only, and hard: leaving the agent would run take_events' `finally`, which
            # acks the batch, and faust would then commit offsets of records that are not in
            # the database. Exiting at once commits nothing; the restart redoes the batch.
            logging.shutdown()
            os._exit(70)

    @app.agent(inputs, concurrency=1)
    async def route(stream: faust.StreamT[bytes]) -> None:
        # take_events is faust-streaming's, missing from StreamT's stubs.
        async for events in stream.take_events(  # type: ignore[attr-defined]
                settings.batch_size, within=settings.batch_within):
            batch = [Message(e.message.topic, e.message.partition, e.message.offset,
                             e.message.key, e.message.value) for e in events]
            work = asyncio.ensure_future(handle(batch))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                # Shutdown: the batch's records are acked when this loop unwinds, so let its
                # commit and sends finish first.
                await work
                raise

    @app.task
    async def serve_health() -> None:
        await parts.start()
        await _restart_when_stuck(parts)

    return app


async def _restart_when_stuck(parts: Parts, grace: float = 15.0) -> None:
    """faust's consumer can stay stuck after a broker outage: it finds the coordinator again but
    never rejoins the group, and nothing is fetched (faust-streaming issues #175, #523). When
    input is pending, nothing has committed for ``stall_after`` seconds and both services have
    been reachable for ``grace`` seconds, the worker restarts itself in place (``exec``, same
    process): the checkpoint makes a restart safe at any point."""
    healthy_since: float | None = None
    while True:
        await asyncio.sleep(parts.settings.probe_every)
        stalled = parts.health.stalled()
        if parts.health.problems or not stalled:
            healthy_since = None
            continue
        now = time.monotonic()
        healthy_since = healthy_since or now
        if now - healthy_since >= grace:
            log.error("faust consumer stuck (%s) with both services reachable; restarting "
                      "the worker in place", stalled)
            logging.shutdown()
            # `stageroute worker ...` and `python -m streams.cli worker ...` alike.
            os.execv(sys.executable, [sys.executable, "-m", "streams.cli", *sys.argv[1:]])


def run_worker(settings: WorkerSettings, store: AuditStore, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT. Does not return normally."""
    app = build_app(settings, store)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=True,
                          console_port=0)
    worker.execute_from_commandline()

"""The faust app of the live worker: one agent over every input topic, plus /health, /metrics.

The agent only moves bytes: it takes a batch of records (``stream.take_events``), hands it to
``Processor.process`` (decode -> engine -> one Postgres commit; run in a thread so the event
loop keeps fetching and heartbeating meanwhile) and publishes what comes back, awaiting the
broker's acks before the batch's offsets are acked to faust (and later committed).

Commit order, per batch: Postgres transaction (journal, decisions, dead letters, registry,
consumer tracking) -> produce decisions and dead letters (acks=all, idempotent producer) ->
ack the input records -> faust commits consumer offsets in the background. Exactly-once in
effect comes from the database (tracking rows skip redelivered records), not from Kafka
transactions; faust's ``processing_guarantee="exactly_once"`` is not used.

``concurrency=1``: one agent instance, so records are applied in the order consumed, and no
gaps in acked offsets (faust-streaming issue #606: with concurrent agents an offset can be
committed past a record that is still in flight).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from stageroute.engine import EngineConfig
from streams import topics
from streams.audit.store import AuditStore
from streams.live.outputs import last_sent_seqs
from streams.live.processor import Message, Outgoing, Processor

log = logging.getLogger("stageroute.worker")


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

    @property
    def names(self) -> topics.TopicNames:
        return topics.TopicNames(self.topic_prefix)

    @property
    def group_id(self) -> str:
        return self.group or f"stageroute-worker-{self.run_name}"


class WorkerApp(faust.App):
    """A faust app that snapshots engine state and closes its producer on the way out."""

    processor: Processor
    output: OutputProducer

    async def on_stop(self) -> None:
        await super().on_stop()
        await asyncio.get_running_loop().run_in_executor(None, self.processor.snapshot_all)
        await self.output.stop()


class OutputProducer:
    """Idempotent aiokafka producer for decisions and dead letters, started on first use."""

    def __init__(self, bootstrap: str, names: topics.TopicNames) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self._producer: AIOKafkaProducer | None = None

    async def send_all(self, records: Sequence[Outgoing]) -> None:
        """Send and wait for every ack."""
        await asyncio.gather(*await self.enqueue(records))

    async def enqueue(self, records: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
        """Hand the records to the producer in order; returns their ack futures."""
        if not records:
            return []
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                linger_ms=1, max_batch_size=256 * 1024)
            await self._producer.start()
        send = self._producer.send
        decisions, dead = self.names.routing_decisions, self.names.dead_letters
        return [await send(dead if r.dead else decisions, value=r.value, key=r.key)
                for r in records]

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


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
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_tables_enabled=False,
    )
    processor = Processor(store, settings.run_name, settings.config, settings.snapshot_every,
                          last_sent=lambda: last_sent_seqs(
                              settings.bootstrap, settings.names.routing_decisions))
    output = OutputProducer(settings.bootstrap, settings.names)
    app.processor, app.output = processor, output
    inputs = app.topic(*settings.names.inputs, key_serializer="raw", value_serializer="raw")
    # One thread: process() is not reentrant, and the engine is CPU-bound anyway.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stageroute-process")
    state: dict[str, Any] = {"failed": None}

    async def handle(batch: list[Message]) -> None:
        loop = asyncio.get_running_loop()
        try:
            records = await loop.run_in_executor(executor, processor.process, batch)
            await output.send_all(records)
        except Exception as exc:
            state["failed"] = repr(exc)
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

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        failed = state["failed"]
        body = {"status": "failed" if failed else "ok", "error": failed,
                "run": settings.run_name, "domains": sorted(processor.runs),
                "last_commit": processor.metrics.last_commit}
        return web.json(body, status=503 if failed else 200)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.text(render_metrics(processor, _highwaters(app)),
                        content_type="text/plain")

    return app


def _highwaters(app: faust.App) -> dict[tuple[str, int], int]:
    try:
        consumer = app.consumer
        return {(tp.topic, tp.partition): int(consumer.highwater(tp))
                for tp in consumer.assignment() if consumer.highwater(tp) is not None}
    except Exception:  # not started, or rebalancing: report no lag figure
        return {}


def render_metrics(processor: Processor, highwaters: dict[tuple[str, int], int]) -> str:
    """Prometheus text exposition of the worker's counters."""
    m = processor.metrics
    lines = [
        ("stageroute_events_processed_total", "counter", m.events),
        ("stageroute_routing_decisions_total", "counter", m.decisions),
        ("stageroute_deployment_decisions_total", "counter", m.deployments),
        ("stageroute_dead_letters_total", "counter", m.dead_letters),
        ("stageroute_redelivered_skipped_total", "counter", m.skipped_redelivered),
        ("stageroute_decisions_resent_total", "counter", m.resent),
        ("stageroute_batches_total", "counter", m.batches),
        ("stageroute_snapshots_total", "counter", m.snapshots),
        ("stageroute_decisions_per_second", "gauge", round(m.rate(), 3)),
        ("stageroute_last_batch_seconds", "gauge", round(m.last_batch_seconds, 6)),
        ("stageroute_domains", "gauge", len(processor.runs)),
    ]
    text = [f"# TYPE {name} {kind}\n{name} {value}" for name, kind, value in lines]
    if highwaters:
        text.append("# TYPE stageroute_consumer_lag gauge")
        for (topic, partition), hw in sorted(highwaters.items()):
            lag = max(0, hw - m.positions.get((topic, partition), 0))
            text.append(f'stageroute_consumer_lag{{topic="{topic}",partition="{partition}"}} '
                        f"{lag}")
    return "\n".join(text) + "\n"


def run_worker(settings: WorkerSettings, store: AuditStore, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (then snapshot and stop). Does not return normally."""
    app = build_app(settings, store)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, override_logging=True,
                          console_port=0)
    worker.execute_from_commandline()

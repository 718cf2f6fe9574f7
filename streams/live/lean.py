"""The worker without faust's stream layer: an aiokafka consumer loop (``--runtime aiokafka``).

Same ``Processor``, same output producer, same commit order as the faust app
(``streams.live.app``): Postgres transaction -> produce (acks=all, idempotent) -> commit the
consumer offsets of the batch. What it drops is faust's per-record machinery (an ``Event`` per
record, per-record acks through the take buffer), which measured ~130 us per record on the
2-core test machine: more than decoding, routing and persisting a record together. Batches are
``consumer.getmany(max_records=batch_size)``; offsets are committed once per batch, after its
outputs are acked. Batches are pipelined: batch N+1 is decoded and applied to the engine (one
thread) while batch N's transaction commits (another thread; Postgres runs on another core).
The commit order per batch is unchanged, and a failure of either stops the worker: the
restart reloads the engine states from the database.

/health and /metrics are served by aiohttp (faust's own web layer is built on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from streams.audit.store import AuditStore
from streams.live.app import OutputProducer, WorkerSettings, render_metrics
from streams.live.outputs import last_sent_seqs
from streams.live.processor import Message, Outgoing, Processor

log = logging.getLogger("stageroute.worker")


class LeanWorker:
    def __init__(self, settings: WorkerSettings, store: AuditStore) -> None:
        self.settings = settings
        self.processor = Processor(
            store, settings.run_name, settings.config, settings.snapshot_every,
            last_sent=lambda: last_sent_seqs(settings.bootstrap,
                                             settings.names.routing_decisions))
        self.output = OutputProducer(settings.bootstrap, settings.names)
        self.failed: str | None = None
        self.stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self._acks: asyncio.Future[None] | None = None

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        runner = await self._serve_web()
        self.consumer = consumer = AIOKafkaConsumer(
            *s.names.inputs, bootstrap_servers=s.bootstrap, group_id=s.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=s.batch_size, fetch_max_wait_ms=max(1, int(s.batch_within * 1000)),
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout / 3) * 1000))
        await consumer.start()
        # Two threads, one pipeline: batch N+1 is decoded and routed while batch N commits.
        cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stageroute-apply")
        db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stageroute-commit")
        inflight: tuple[asyncio.Future[list[Outgoing]], dict[Any, Any]] | None = None
        try:
            while not self.stopping.is_set():
                # With a commit in flight, take only what is already fetched: an idle wait
                # here would hold back that commit's outputs.
                wait = 0 if inflight is not None else int(s.batch_within * 1000)
                fetched = await consumer.getmany(timeout_ms=wait, max_records=s.batch_size)
                prepared = None
                if fetched:
                    batch = [Message(r.topic, r.partition, r.offset, r.key, r.value)
                             for records in fetched.values() for r in records]
                    prepared = await self._guard(loop.run_in_executor(
                        cpu, self.processor.prepare, batch))
                if inflight is not None:
                    await self._finish(*inflight)
                    inflight = None
                if prepared is not None:
                    inflight = (loop.run_in_executor(db, self.processor.commit, prepared),
                                fetched)
            if inflight is not None:
                await self._finish(*inflight)
                inflight = None
            if self._acks is not None:
                await self._acks
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            if inflight is None and self.failed is None:
                await loop.run_in_executor(db, self.processor.snapshot_all)
            await self.output.stop()
            cpu.shutdown()
            db.shutdown()
            await runner.cleanup()

    async def _guard(self, work: Any) -> Any:
        try:
            return await work
        except Exception as exc:
            self.failed = repr(exc)
            log.exception("batch failed; stopping so a restart resumes from the database")
            raise

    async def _finish(self, commit: asyncio.Future[list[Outgoing]],
                      fetched: dict[Any, Any]) -> None:
        """Await a batch's commit and hand its outputs to the producer; a background task then
        awaits their acks and commits the batch's input offsets.

        Not waiting for the acks here lets the next transaction start at once. Outputs are
        enqueued in batch order on one idempotent producer, so each partition still receives
        them in commit order (what ``Processor._load`` relies on), and offsets are committed
        in batch order, each only after its batch's outputs are acked."""
        records = await self._guard(commit)
        previous = self._acks
        if previous is not None and previous.done():
            previous.result()  # a failed send or commit stops the worker
            previous = None
        futures = await self.output.enqueue(records)
        offsets = {TopicPartition(tp.topic, tp.partition): recs[-1].offset + 1
                   for tp, recs in fetched.items()}
        self._acks = asyncio.ensure_future(self._ack_then_commit(previous, futures, offsets))

    async def _ack_then_commit(self, previous: asyncio.Future[None] | None,
                               futures: list[asyncio.Future[Any]],
                               offsets: dict[TopicPartition, int]) -> None:
        if previous is not None:
            await previous
        await asyncio.gather(*futures)
        assert self.consumer is not None
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance: the records come again and are skipped by tracking.
            log.warning("offset commit failed (%s); records will be redelivered", exc)

    def _highwaters(self) -> dict[tuple[str, int], int]:
        consumer = self.consumer
        if consumer is None:
            return {}
        found = {}
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is not None:
                found[(tp.topic, tp.partition)] = hw
        return found

    async def _serve_web(self) -> web.AppRunner:
        async def health(request: Any) -> web.Response:
            body = {"status": "failed" if self.failed else "ok", "error": self.failed,
                    "run": self.settings.run_name, "domains": sorted(self.processor.runs),
                    "last_commit": self.processor.metrics.last_commit}
            return web.json_response(body, status=503 if self.failed else 200)

        async def metrics(request: Any) -> web.Response:
            return web.Response(text=render_metrics(self.processor, self._highwaters()),
                                content_type="text/plain")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.settings.web_host, self.settings.web_port).start()
        return runner


def run_lean(settings: WorkerSettings, store: AuditStore) -> None:
    """Run until SIGTERM/SIGINT, then snapshot and stop."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    asyncio.run(LeanWorker(settings, store).run())

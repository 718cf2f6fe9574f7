"""The commit protocol of a live worker, shared by both runtimes (faust, aiokafka): each runtime
is only its consume loop, calling ``on_assigned``, ``on_revoked`` and ``process``.

Per batch, in this order::

    1. apply      decode, load the domains' states (from the database, on first use after a
                  claim), apply the events to the engines          -> rows + output records
    2. publish    hand every output record to the idempotent producer at once (acks=all);
                  decisions do not wait for the database
    3. persist    journal + decisions + dead letters + registry + snapshots + the partitions'
                  new positions in ONE transaction under the owner's fence
    4. acks       wait for the broker's acks of step 2
    5. offsets    the runtime commits the batch's consumer offsets (faust: acks the events)

Why each crash point is repaired by replay (a crash = the process dies, nothing of it is
kept; the engine is deterministic, so re-applying the same records in the same order from the
same state makes byte-identical outputs):

* before 2 (after 1): nothing left the process. The records are redelivered (their offsets
  were not committed) and applied again to the state the database holds.
* between 2 and 3: some outputs may be on the topics, nothing is stored. Redelivery applies
  the records again, stores them, and publishes the same outputs again (consumers dedupe by
  ``(domain, seq)``; the copies are identical).
* between 3 and 4: stored, outputs perhaps unsent, offsets not committed. The records are
  redelivered and skipped (at or below the committed position); the new owner's ``assign``
  re-sends the stored outputs of every record between Kafka's committed offset and the
  database's position, so whatever the producer lost is sent.
* between 4 and 5: as the previous case; the re-sent outputs are duplicates.

A worker that lost a partition (a zombie, paused past its session timeout) may still run steps
1-2 for it: its state was loaded after its own claim and applied in log order, so what it
publishes is identical to what the owner publishes. Step 3 fails on the fence for those
partitions (``Fenced``); their domains are dropped and their offsets not committed.

Outages never end the process: the database steps (1, 3) and the broker steps (2, 4, the claim
on assignment) are retried with bounded exponential backoff (tenacity) for as long as it takes,
with /health ``degraded`` meanwhile and one log line per outage; the batch's outputs are kept
and re-sent until acked, so nothing waits for new input. The database step is safe to retry:
``streams.audit.live.commit`` recognises a batch whose COMMIT succeeded unseen.

Deterministic fault injection for tests: ``STAGEROUTE_CRASH_AT=<point>:<batch>`` makes the
process exit (code 86) at ``point`` (``applied``, ``published``, ``persisted``, ``acked``) of
its ``batch``-th batch (1-based).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from kafka.errors import KafkaError as SyncKafkaError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from streams import topics
from streams.audit.live import TP
from streams.live.health import Health
from streams.live.processor import Message, Outgoing, Processor

log = logging.getLogger("stageroute.worker")
T = TypeVar("T")

CRASH_EXIT: Final = 86
MAX_BACKOFF: Final = 5.0
"""Seconds between retries at most."""
ACK_TIMEOUT: Final = 30.0
"""Seconds to wait for the broker's acks of a batch's outputs before sending them again."""


def database_down(exc: BaseException) -> bool:
    """Whether a database error means "unreachable, try again" rather than a bug."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout
                      | psycopg.OperationalError)


def broker_down(exc: BaseException) -> bool:
    return isinstance(exc, KafkaError | SyncKafkaError | asyncio.TimeoutError | OSError)


class OutputProducer:
    """The idempotent aiokafka producer of decisions and dead letters (acks=all)."""

    def __init__(self, bootstrap: str, names: topics.TopicNames) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                linger_ms=1, max_batch_size=256 * 1024, request_timeout_ms=15_000)
            try:
                await asyncio.wait_for(producer.start(), ACK_TIMEOUT)
            except BaseException:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(producer.stop(), ACK_TIMEOUT)
                raise
            self._producer = producer

    async def enqueue(self, records: Sequence[Outgoing]) -> list[asyncio.Future[Any]]:
        """Hand the records to the producer in order; returns their ack futures."""
        if not records:
            return []
        try:
            await self.start()
            assert self._producer is not None
            send = self._producer.send
            decisions, dead = self.names.routing_decisions, self.names.dead_letters
            return [await send(dead if r.dead else decisions, value=r.value, key=r.key)
                    for r in records]
        except BaseException:
            await self.stop()
            raise

    async def send_all(self, records: Sequence[Outgoing]) -> None:
        """Send and wait for every ack; on a failure the producer is replaced (an idempotent
        producer's sequence can be broken for good by a broker restart:
        ``OutOfOrderSequenceNumber``), and the error raised."""
        try:
            await asyncio.wait_for(asyncio.gather(*await self.enqueue(records)), ACK_TIMEOUT)
        except BaseException:
            await self.stop()
            raise

    async def probe(self) -> None:
        """A metadata round trip to the brokers (raises when none answers)."""
        await self.start()
        producer = self._producer
        assert producer is not None
        await producer.client.fetch_all_metadata()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(producer.stop(), ACK_TIMEOUT)


class Checkpoint:
    """Runs the protocol of the module docstring for one worker."""

    def __init__(self, processor: Processor, output: OutputProducer, health: Health,
                 committed: Callable[[list[TP]], Awaitable[dict[TP, int]]]) -> None:
        self.processor = processor
        self.output = output
        self.health = health
        self.committed = committed
        # The processor is not reentrant: every call to it runs on this one thread.
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stageroute-batch")
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.batches = 0
        #: Next offset per partition whose batch is done (stored, outputs acked).
        self.done: dict[TP, int] = {}
        point, _, batch = os.environ.get("STAGEROUTE_CRASH_AT", "").partition(":")
        self._crash = (point, int(batch)) if batch.isdigit() else None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    # --- ownership -------------------------------------------------------------------------

    async def on_assigned(self, partitions: Iterable[TP]) -> None:
        tps = sorted(partitions)
        if not tps:
            return
        async with self.lock:
            try:
                committed = await self.retry("broker", lambda: self.committed(tps))
                resend = await self.retry(
                    "database", lambda: self._call(self.processor.assign, tps, committed))
                if resend:
                    log.info("re-sending %d committed outputs of %s", len(resend), tps)
                    await self.retry("broker", lambda: self.output.send_all(resend))
            except Exception:
                # A claim still retrying when the worker is told to stop gives up quietly:
                # records of a partition never claimed are neither applied nor committed
                # (``Processor.prepare`` skips them), and the next owner's claim re-sends
                # what this one did not. Raising would turn a clean stop into a crash.
                if not self.stopping.is_set():
                    raise
                log.info("stopping: claim of %s abandoned", tps)

    async def on_revoked(self, partitions: Iterable[TP]) -> None:
        tps = list(partitions)
        async with self.lock:  # the in-flight batch finishes first
            await self._call(self.processor.revoke, tps)

    # --- one batch -----------------------------------------------------------------------

    async def process(self, messages: Sequence[Message]) -> dict[TP, int]:
        """Steps 1-4; returns the offsets to commit (next offset per partition), which
        leave out partitions found fenced."""
        started = time.perf_counter()
        async with self.lock:
            self.batches += 1
            prepared = await self.retry(
                "database", lambda: self._call(self.processor.prepare, messages))
            self._crash_point("applied")
            futures = await self.retry("broker", lambda: self.output.enqueue(prepared.out))
            self._crash_point("published")
            lost = await self.retry("database",
                                    lambda: self._call(self.processor.commit, prepared))
            self._crash_point("persisted")
            try:
                await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT)
            except Exception as exc:
                if not broker_down(exc):
                    raise
                log.warning("outputs not acknowledged (%s); re-sending them", exc)
                await self.output.stop()
                await self.retry("broker", lambda: self.output.send_all(prepared.out))
            self._crash_point("acked")
        self.health.metrics.committed(time.perf_counter() - started)
        offsets = {tp: o for tp, o in prepared.offsets.items() if tp[1] not in lost}
        self.done.update(offsets)
        return offsets

    def _crash_point(self, point: str) -> None:
        if self._crash == (point, self.batches):
            log.warning("fault injection: exiting at %s of batch %d", point, self.batches)
            logging.shutdown()
            os._exit(CRASH_EXIT)

    # --- retries -------------------------------------------------------------------------

    async def retry(self, service: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` until it succeeds, backing off exponentially (capped at
        ``MAX_BACKOFF``) while ``service`` is down; anything else is raised at once."""
        transient = database_down if service == "database" else broker_down
        first_failure: float | None = None

        def before_sleep(state: RetryCallState) -> None:
            nonlocal first_failure
            exc = state.outcome.exception() if state.outcome else None
            # asyncio.TimeoutError has no message: name the type, or the log line is empty.
            reason = f"{type(exc).__name__}: {exc}".strip(": ")
            self.health.metrics.retries.labels(service).inc()
            self.health.degrade(service, reason[:200])
            if first_failure is None:
                first_failure = time.monotonic()
                log.warning("%s unavailable (%s); pausing and retrying with backoff",
                            service, reason.splitlines()[0][:200])

        retrying = AsyncRetrying(
            retry=retry_if_exception(transient), reraise=True, before_sleep=before_sleep,
            wait=wait_exponential(multiplier=0.1, max=MAX_BACKOFF),
            stop=lambda state: self.stopping.is_set())
        async def attempt() -> T:  # a coroutine function, so that tenacity awaits it
            return await call()

        result: T = await retrying(attempt)
        if first_failure is not None:
            self.health.clear(service)
            log.warning("%s back after %.1f s", service, time.monotonic() - first_failure)
        return result

    async def close(self) -> None:
        self.stopping.set()
        await self.output.stop()
        self.thread.shutdown(wait=True)


class Offsets:
    """The group's committed offsets and the partitions' end offsets, read by a consumer of
    the group that never subscribes (so never joins it); for ``Checkpoint`` and for lag.

    Every call has a deadline: aiokafka waits for a group coordinator without one, and after a
    broker restart such a wait can last forever. A call that fails or times out drops the
    consumer, and the next call starts a new one."""

    def __init__(self, bootstrap: str, group: str, timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None

    async def _call(self, fn: Callable[[AIOKafkaConsumer], Awaitable[T]]) -> T:
        try:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap, group_id=self.group,
                    enable_auto_commit=False, request_timeout_ms=int(self.timeout * 1000))
                self._consumer = consumer
                await asyncio.wait_for(consumer.start(), self.timeout)
            return await asyncio.wait_for(fn(self._consumer), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def committed(self, tps: list[TP]) -> dict[TP, int]:
        """Next offset to read per partition, as the group committed it (absent: none)."""

        async def read(consumer: AIOKafkaConsumer) -> dict[TP, int]:
            found = {}
            for topic, partition in tps:
                offset = await consumer.committed(TopicPartition(topic, partition))
                if offset is not None and offset >= 0:
                    found[(topic, partition)] = offset
            return found

        return await self._call(read)

    async def ends(self, tps: list[TP]) -> dict[TP, int]:
        if not tps:
            return {}

        async def read(consumer: AIOKafkaConsumer) -> dict[TP, int]:
            ends = await consumer.end_offsets([TopicPartition(t, p) for t, p in tps])
            return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

        return await self._call(read)

    async def partitions(self, topics: Iterable[str]) -> list[TP]:
        """Every partition of ``topics`` (fresh metadata)."""

        async def read(consumer: AIOKafkaConsumer) -> list[TP]:
            cluster = await consumer._client.fetch_all_metadata()
            return [(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]

        return await self._call(read)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(consumer.stop(), self.timeout)

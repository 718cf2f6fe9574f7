"""The commit protocol of a live worker, shared by both runtimes (faust, aiokafka): each runtime
is only its consume loop, calling ``on_assigned``, ``on_revoked`` and ``process``.

Decide from the log, persist behind. Per batch, in this order::

    1. apply      decode, load the domains' states (from the database, on first use after a
                  claim), apply the events to the engines          -> rows + output records
    2. publish    hand every output record to the idempotent producer at once (acks=all);
                  ``process`` returns here: the next batch is applied while this one is
                  persisted behind it
    3. acks       (the persister, in batch order) wait for the broker's acks of step 2
    4. persist    journal + decisions + dead letters + registry + snapshots + the partitions'
                  new positions in ONE transaction under the owner's fence; batches that are
                  ready together are stored in one transaction (group commit)
    5. offsets    the batch's consumer offsets are committed (aiokafka: the committer task;
                  faust: the agent awaits step 4, then faust acks the events)

The input topic is the durable record (written with acks=all by idempotent producers), and
decisions are a pure function of it, so a decision may be on the output topic before its
audit rows commit: replay from the last stored position recomputes it byte for byte and
stores it. How far the trail may lag is bounded (``max_lag_records``, ``max_lag_seconds``):
``process`` does not apply a batch while the records applied but not yet stored, with the new
batch, would exceed ``max_lag_records`` (a lone batch larger than that is applied once nothing
is pending), nor while the oldest unstored batch was applied more than ``max_lag_seconds``
ago. The runtime is then not consuming: a slow or unreachable database pauses consumption
instead of letting the trail fall arbitrarily behind the published decisions.

Why each crash point is repaired by replay (a crash = the process dies, nothing of it is
kept; the engine is deterministic, so re-applying the same records in the same order from the
same state makes byte-identical outputs):

* before 2 (after 1): nothing left the process. The records are redelivered (their offsets
  were not committed) and applied again to the state the database holds.
* between 2 and 4 (``published``, ``acked``): outputs of this batch and of the batches
  pipelined behind it may be on the topics, nothing of them is stored. Redelivery applies the
  records again to the stored state, stores them, and publishes the same outputs again
  (consumers dedupe by ``(domain, seq)``; the copies are identical): every published decision
  ends up in the trail, byte-identical.
* between 4 and 5 (``persisted``): stored, offsets not committed. The records are redelivered
  and skipped (at or below the stored position); the new owner's ``assign`` re-sends the
  stored outputs of every record between Kafka's committed offset and the database's
  position (duplicates here, and whatever the producer lost in other cases).

A worker that lost a partition (a zombie, paused past its session timeout) may still run steps
1-2 for it: its state was loaded after its own claim and applied in log order, so what it
publishes is identical to what the owner publishes. Step 4 fails on the fence for those
partitions (``Fenced``); their domains are dropped, their rows taken out of the pending
batches and their offsets not committed.

Outages never end the process: the database steps (1, 4) and the broker steps (2, 3, the claim
on assignment) are retried with bounded exponential backoff (tenacity) for as long as it takes,
with /health ``degraded`` meanwhile and one log line per outage; a batch's outputs are kept
and re-sent until acked, so nothing waits for new input. The database step is safe to retry:
``streams.audit.live.commit`` recognises a batch whose COMMIT succeeded unseen. Any other
failure of the persister is fatal: ``check`` (and every later ``process``) raises it, and the
runtime exits so that a restart resumes from the database.

Deterministic fault injection for tests: ``STAGEROUTE_CRASH_AT=<point>:<batch>`` makes the
process exit (code 86) at ``point`` (``applied``, ``published``, ``acked``, ``persisted``) of
its ``batch``-th batch (1-based). For benchmarks only, ``STAGEROUTE_BENCH_NO_PERSIST=1`` skips
step 4's transaction (claims and loads still use the database; such a run is not an audit
trail and cannot be resumed): it measures what the trail costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from kafka.errors import KafkaError as SyncKafkaError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from streams import topics
from streams.audit.live import TP, Fenced
from streams.live.health import Health
from streams.live.processor import Message, Outgoing, Prepared, Processor

log = logging.getLogger("stageroute.worker")


def settle_heap() -> None:
    """Exempt every object alive now from the cyclic garbage collector's later passes.

    After a claim the heap is mostly long-lived: modules, schemas and the restored engine
    states (over 140,000 objects after the imports alone). Each full collection walks all of
    them on the processing thread, 100-260 ms here, and every query in flight waits that long
    (it was most of the round trip's p99). ``gc.freeze`` moves them to a permanent generation
    that collections skip; they are still freed by reference counting, and only garbage
    *cycles* alive at this instant would never be collected (a bounded, one-off amount per
    claim)."""
    gc.freeze()


T = TypeVar("T")

CRASH_EXIT: Final = 86
MAX_BACKOFF: Final = 5.0
"""Seconds between retries at most."""
ACK_TIMEOUT: Final = 30.0
"""Seconds to wait for the broker's acks of a batch's outputs before sending them again."""
MAX_LAG_RECORDS: Final = 20_000
"""Default bound: input records applied and published but not yet stored."""
MAX_LAG_SECONDS: Final = 5.0
"""Default bound: age of the oldest batch applied and published but not yet stored."""


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


@dataclass(eq=False)
class Ticket:
    """One batch between publishing (step 2) and its stored offsets (step 5)."""

    number: int
    batch: Prepared
    acks: list[asyncio.Future[Any]]
    applied: float
    """``time.monotonic()`` when it was applied."""
    stored: asyncio.Future[dict[TP, int]]
    """Resolves to the batch's offsets to commit once it is stored (fenced partitions left
    out), or to the persister's fatal error."""


class Checkpoint:
    """Runs the protocol of the module docstring for one worker."""

    def __init__(self, processor: Processor, output: OutputProducer, health: Health,
                 committed: Callable[[list[TP]], Awaitable[dict[TP, int]]],
                 max_lag_records: int = MAX_LAG_RECORDS,
                 max_lag_seconds: float = MAX_LAG_SECONDS) -> None:
        self.processor = processor
        self.output = output
        self.health = health
        self.committed = committed
        self.max_lag_records = max_lag_records
        self.max_lag_seconds = max_lag_seconds
        #: Step 5 for runtimes that commit offsets themselves (aiokafka); called from the
        #: committer task with the newest stored offsets, never concurrently.
        self.commit_offsets: Callable[[dict[TP, int]], Awaitable[None]] | None = None
        # The processor is not reentrant: every call to it runs on this one thread; the
        # transactions of step 4 run on their own thread (``Processor.persist`` touches only
        # the database), so that applying the next batch does not wait for them.
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stageroute-batch")
        self.db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stageroute-db")
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.batches = 0
        #: Next offset per partition whose batch is done (stored, outputs acked).
        self.done: dict[TP, int] = {}
        self.pending: deque[Ticket] = deque()
        self.pending_records = 0
        self.failed: BaseException | None = None
        self._progress: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._uncommitted: dict[TP, int] = {}
        self._commit_wanted = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        point, _, batch = os.environ.get("STAGEROUTE_CRASH_AT", "").partition(":")
        self._crash = (point, int(batch)) if batch.isdigit() else None
        self._skip_persist = os.environ.get("STAGEROUTE_BENCH_NO_PERSIST") == "1"

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    def _start(self) -> asyncio.Condition:
        if self._progress is None:
            self._progress = asyncio.Condition()
            self._tasks = [asyncio.ensure_future(self._persist_forever()),
                           asyncio.ensure_future(self._commit_forever())]
        return self._progress

    def check(self) -> None:
        """Raise the persister's fatal error, if it had one."""
        if self.failed is not None:
            raise self.failed

    # --- ownership -------------------------------------------------------------------------

    async def on_assigned(self, partitions: Iterable[TP]) -> None:
        tps = sorted(partitions)
        if not tps:
            return
        async with self.lock:
            await self.drain()
            try:
                committed = await self.retry("broker", lambda: self.committed(tps))
                resend = await self.retry(
                    "database", lambda: self._call(self.processor.assign, tps, committed))
                if resend:
                    log.info("re-sending %d committed outputs of %s", len(resend), tps)
                    await self.retry("broker", lambda: self.output.send_all(resend))
                settle_heap()
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
        if self.stopping.is_set():
            return  # after ``close``: stored and committed what it could; the process ends
        async with self.lock:  # the in-flight batch finishes first, then the stored ones
            await self.drain()
            await self.flush_offsets()
            await self._call(self.processor.revoke, tps)

    # --- one batch -----------------------------------------------------------------------

    async def process(self, messages: Sequence[Message]) -> asyncio.Future[dict[TP, int]]:
        """Steps 1-2, once the trail is within its lag bound; returns the future of the
        batch's offsets to commit (step 5), which resolves once steps 3-4 are done."""
        progress = self._start()
        self.check()
        await self._within_lag(progress, len(messages))
        async with self.lock:
            self.batches += 1
            prepared = await self.retry(
                "database", lambda: self._call(self.processor.prepare, messages))
            self._crash_point("applied", self.batches)
            acks = await self.retry("broker", lambda: self.output.enqueue(prepared.out))
            self._crash_point("published", self.batches)
            ticket = Ticket(self.batches, prepared, acks, time.monotonic(),
                            asyncio.get_running_loop().create_future())
            self.pending.append(ticket)
            self.pending_records += prepared.records
            self.health.metrics.trail_lag.set(self.pending_records)
        async with progress:
            progress.notify_all()
        return ticket.stored

    async def _within_lag(self, progress: asyncio.Condition, coming: int) -> None:
        def within() -> bool:
            if self.failed is not None or not self.pending:
                return True
            age = time.monotonic() - self.pending[0].applied
            return (self.pending_records + coming <= self.max_lag_records
                    and age <= self.max_lag_seconds)

        if within():
            return
        self.health.metrics.lag_pauses.inc()
        async with progress:
            await progress.wait_for(within)
        self.check()

    async def drain(self) -> None:
        """Wait until every applied batch is stored (raises the persister's fatal error).
        Returns at once after ``close``: the persister is gone, and what it did not store
        has no committed offsets (it is redelivered to the next owner)."""
        progress = self._start()
        async with progress:
            await progress.wait_for(lambda: not self.pending or self.failed is not None
                                    or self.stopping.is_set())
        self.check()

    async def _persist_forever(self) -> None:
        """Steps 3-4 for the pending batches, in order; the batches found waiting together
        are stored in one transaction."""
        progress = self._start()
        try:
            while True:
                async with progress:
                    await progress.wait_for(lambda: bool(self.pending))
                group = list(self.pending)
                offsets = await self._persist(group)
                for ticket in group:
                    self.pending.popleft()
                    self.pending_records -= ticket.batch.records
                    ticket.stored.set_result({tp: o for tp, o in ticket.batch.offsets.items()
                                              if tp in offsets})
                self.done.update(offsets)
                self._uncommitted.update(offsets)
                self._commit_wanted.set()
                oldest = self.pending[0].applied if self.pending else time.monotonic()
                self.health.metrics.trail_lag.set(self.pending_records)
                self.health.metrics.trail_age.set(time.monotonic() - oldest)
                async with progress:
                    progress.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failed = exc
            self.health.failed = repr(exc)
            log.error("storing a batch failed: %r", exc)
            for ticket in self.pending:
                if not ticket.stored.done():
                    ticket.stored.set_exception(exc)
                    ticket.stored.exception()  # retrieved: the runtime raises it via check()
            async with progress:
                progress.notify_all()

    async def _persist(self, group: list[Ticket]) -> dict[TP, int]:
        started = time.perf_counter()
        futures = [f for ticket in group for f in ticket.acks]
        try:
            await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT)
        except Exception as exc:
            if not broker_down(exc):
                raise
            log.warning("outputs not acknowledged (%s); re-sending them", exc)
            await self.output.stop()
            outs = [o for ticket in group for o in ticket.batch.out]
            await self.retry("broker", lambda: self.output.send_all(outs))
        for ticket in group:
            self._crash_point("acked", ticket.number)
        batch = group[0].batch
        if len(group) > 1:
            batch = Prepared()
            for ticket in group:
                batch.absorb(ticket.batch)
        lost: set[int] = set()
        while not self._skip_persist:
            try:
                await self.retry("database", lambda: asyncio.get_running_loop()
                                 .run_in_executor(self.db_thread, self.processor.persist, batch))
                break
            except Fenced as fenced:
                lost |= await self._call(self.processor.fence, batch, fenced)
        self.processor.count(batch)
        for ticket in group:
            self._crash_point("persisted", ticket.number)
        self.health.metrics.committed(time.perf_counter() - started)
        return {tp: o for tp, o in batch.offsets.items() if tp[1] not in lost}

    # --- offsets (runtimes that commit them: ``commit_offsets``) ---------------------------

    async def _commit_forever(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self.flush_offsets()

    async def flush_offsets(self) -> None:
        """Commit the newest stored offsets not committed yet (a failure is logged: the
        records come again, are skipped, and their outputs are re-sent by the next owner)."""
        async with self._commit_lock:
            offsets, self._uncommitted = self._uncommitted, {}
            if not offsets or self.commit_offsets is None:
                return
            try:
                await asyncio.wait_for(self.commit_offsets(offsets), ACK_TIMEOUT)
            except Exception as exc:  # any failure: the records are redelivered, see above
                log.warning("offset commit failed (%s); records will be redelivered",
                            _first_line(exc))

    def _crash_point(self, point: str, batch: int) -> None:
        if self._crash == (point, batch):
            log.warning("fault injection: exiting at %s of batch %d", point, batch)
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

    async def close(self, timeout: float = 30.0) -> None:
        """Store what is pending (within ``timeout``) and commit its offsets, then stop."""
        if self.pending and self.failed is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.drain(), timeout)
        with contextlib.suppress(Exception):
            await self.flush_offsets()
        self.stopping.set()
        if self._progress is not None:  # wake whatever waits on the persister
            async with self._progress:
                self._progress.notify_all()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.output.stop()
        self.thread.shutdown(wait=True)
        self.db_thread.shutdown(wait=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


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

"""The gateway client: ask stageroute which model serves a query, report how it went.

``Client`` (asyncio) publishes events with an idempotent acks=all producer and reads decisions
with ONE shared consumer; ``route`` publishes a query and awaits its decision (a future per
pending query, resolved by the consumer); ``SyncClient`` wraps it for threaded code::

    async with Client("127.0.0.1:19092", domains=["eu"], fallback_model="small") as client:
        route = await client.route("q-1", QueryFeatures(task="mbpp"), domain="eu")
        ...  # serve the query with route.model_id
        await client.feedback("q-1", route.model_id, reward=1.0, cost=0.0012, domain="eu")

**Timeout and fallback.** ``route`` waits ``timeout`` seconds (default 0.5) for publishing the
query and receiving its decision. Without a decision by then (``timeout``), when the query
could not be published (``unsent (...)``: a broker error, a full outbox), when the worker
rejects it (a dead letter: ``no_models``, ``duplicate_query``, ...) or when the client stops
first (``stopped``), it returns the ``fallback_model`` with ``fallback`` set to why; with no
fallback model configured it raises ``NoDecision``. A query that was published is in the log
either way, so the worker still decides it (late) and stores that decision: its model is not
the fallback the gateway served, so ``feedback`` for a query that fell back is not sent (it
would be a ``model_mismatch`` dead letter); the query stays awaiting feedback, its cost
estimate counted as spent by the budget ledger, until the engine forgets it
(``max_tracked_queries``, ``query_ttl``).

**One sender.** Every event goes through one outbox, published in call order by one
sender task: ``route`` never waits on the producer (a broker outage or a full producer
buffer makes it fall back at its deadline, not hang), and no task is created per query.
``feedback`` and the inventory calls are queued the same way; ``feedback`` returns once
queued, ``publish`` and the inventory calls once the broker acknowledged (or raise), ``flush``
once everything queued so far was acknowledged or failed: feedback nobody waits on that could
not be published (or was still queued at ``stop``) is logged and counted, and the next
``flush`` raises ``FeedbackLost``. More than ``MAX_OUTBOX`` queries waiting to be sent (the
broker unreachable) fall back at once (``unsent (backlog)``).

**Garbage collection.** A gateway process holds a large, long-lived heap (its framework,
this client, pydantic's schemas); CPython's full collections walk all of it and stall the
event loop for tens to hundreds of milliseconds, which every pending ``route`` waits out.
Call ``gc.freeze()`` once the gateway is started (as the worker does after each partition
claim): long-lived objects are then skipped by every later collection.

**Which partitions an instance reads.** Decisions and dead letters are keyed by domain, so a
domain's are on one partition of each output topic: the one its key hashes to (Kafka's murmur2,
the same partition number as its inputs). A client reads only the partitions of the domains it
is given (``domains``; all partitions when none are given), from the end, with no consumer
group: every instance that serves a domain sees every decision of that domain and drops the
ones it did not ask for. So many gateway instances scale by sharding domains across them (an
instance reads only its domains' partitions, in proportion to its own traffic); N instances
serving one domain each read that domain's whole decision stream (N-fold fan-out, which a
decision of ~400 bytes makes cheap up to a few tens of instances). More domains on more
partitions spread both the workers and the gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from schemas import (
    Event,
    Feedback,
    ModelArrived,
    ModelExpired,
    Query,
    QueryFeatures,
    RoutingDecision,
    StageBoundary,
    encode,
)
from schemas.base import DEFAULT_DOMAIN
from streams import topics

log = logging.getLogger("stageroute.client")
T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 0.5
"""Seconds ``route`` waits for a decision before it falls back."""
FALLBACKS_REMEMBERED: Final = 100_000
"""Query ids of fallbacks remembered, so that their feedback is not sent."""
MAX_OUTBOX: Final = 100_000
"""Queries waiting to be sent beyond which ``route`` falls back at once."""


class NoDecision(RuntimeError):
    """No decision in time (or the query was rejected) and no fallback model configured."""

    def __init__(self, query_id: str, reason: str) -> None:
        super().__init__(f"query {query_id!r}: no decision ({reason})")
        self.query_id = query_id
        self.reason = reason


class ClientStopped(RuntimeError):
    """The client stopped before an event it had queued was sent."""


class FeedbackLost(RuntimeError):
    """Feedback queued since the last ``flush`` was not published (``count`` events; ``cause``
    the first error)."""

    def __init__(self, count: int, cause: BaseException) -> None:
        super().__init__(f"{count} feedback event(s) not published, first: {cause!r}")
        self.count = count
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Route:
    """Where a query goes: ``model_id``; ``decision`` is the worker's (None on a fallback) and
    ``fallback`` why it fell back (see the module docstring), else None."""

    model_id: str
    decision: RoutingDecision | None
    fallback: str | None = None


def partition_of(domain: str, partitions: int) -> int:
    """The partition a domain's messages are on (Kafka's default partitioner)."""
    return int(murmur2(domain.encode()) & 0x7FFFFFFF) % partitions


class Client:
    """An asyncio client of one stageroute deployment (see the module docstring)."""

    def __init__(self, bootstrap: str, *, domains: Iterable[str] | None = None,
                 default_domain: str = DEFAULT_DOMAIN, fallback_model: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, topic_prefix: str = topics.DEFAULT_PREFIX,
                 clock: Callable[[], float] = time.time) -> None:
        self.bootstrap = bootstrap
        self.domains = sorted(set(domains)) if domains is not None else None
        self.default_domain = default_domain
        self.fallback_model = fallback_model
        self.timeout = timeout
        self.names = topics.TopicNames(topic_prefix)
        self.clock = clock
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[tuple[str, str], asyncio.Future[RoutingDecision | str]] = {}
        self._fallbacks: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._outbox: deque[_Outgoing] = deque()
        self._queued_queries = 0
        # Feedback not published since the last flush: how many, and the first error.
        self._lost = 0
        self._first_loss: BaseException | None = None
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self.partitions: list[int] = []
        """Partition numbers of the output topics this client reads."""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and position the consumer at the end of its partitions: every decision
        made from now on is seen."""
        # linger 0: a query leaves at once; large batches: what piles up while a request is
        # in flight (thousands of queries and feedbacks a second) goes in one.
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                    enable_idempotence=True, linger_ms=0,
                                    max_batch_size=256 * 1024)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="latest",
                                    fetch_max_wait_ms=100)
        await producer.start()
        self._producer = producer
        await consumer.start()
        self._consumer = consumer
        outputs = (self.names.routing_decisions, self.names.dead_letters)
        # Fresh metadata (``consumer.topics()`` would not update what partitions_for_topic reads).
        cluster = await consumer._client.fetch_all_metadata()
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in outputs}
        if not all(counts.values()):
            await self.stop()
            raise RuntimeError(f"topics missing on {self.bootstrap}: "
                               f"{[t for t, n in counts.items() if not n]}")
        tps: list[TopicPartition] = []
        for topic, count in counts.items():
            wanted = (range(count) if self.domains is None
                      else sorted({partition_of(d, count) for d in self.domains}))
            tps.extend(TopicPartition(topic, p) for p in wanted)
        self.partitions = sorted({tp.partition for tp in tps})
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end now, not at the first fetch
            await consumer.position(tp)
        self._reader = asyncio.ensure_future(self._read())
        self._sender = asyncio.ensure_future(self._send_forever())

    async def stop(self) -> None:
        """Send what is queued (waiting up to the timeout for it), then disconnect."""
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sent_so_far(), self.timeout)
            for future in self._pending.values():  # queued or in flight: 'stopped' either way
                _settle(future, "stopped")
            self._sender.cancel()
            with contextlib.suppress(BaseException):
                await self._sender
            self._sender = None
            while self._outbox:  # not sent in time: whoever waits on it is told
                self._outbox.popleft().failed(ClientStopped())
            self._queued_queries = 0
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self._producer is not None:
            await self._producer.stop()  # sends what is buffered first
            self._producer = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- routing ---------------------------------------------------------------------------

    async def route(self, query_id: str, features: QueryFeatures | None = None,
                    domain: str | None = None, *, timeout: float | None = None) -> Route:
        """Publish the query and await its decision (see the module docstring for the
        timeout and the fallback)."""
        if self._sender is None:
            raise RuntimeError("the client is not started (use `async with Client(...)`)")
        domain = domain or self.default_domain
        query = Query(domain=domain, time=self.clock(), query_id=query_id, features=features)
        key = (domain, query_id)
        if key in self._pending:
            raise ValueError(f"query {query_id!r} of domain {domain!r} is already pending")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RoutingDecision | str] = loop.create_future()
        if self._queued_queries >= MAX_OUTBOX:
            future.set_result("unsent (backlog)")
        else:
            value = encode(query)
            self._pending[key] = future
            self._queue(_Outgoing(value, domain.encode(), decision=future))
            self._queued_queries += 1
        # One deadline for publishing and deciding; at the deadline a queued query is still
        # sent, only its decision is no longer awaited.
        deadline = loop.call_later(self.timeout if timeout is None else timeout,
                                   _settle, future, "timeout")
        try:
            outcome = await future
        finally:
            deadline.cancel()
            self._pending.pop(key, None)
        if isinstance(outcome, RoutingDecision):
            return Route(outcome.model_id, outcome)
        if self.fallback_model is None:
            raise NoDecision(query_id, outcome)
        self._fallbacks[key] = None
        if len(self._fallbacks) > FALLBACKS_REMEMBERED:
            self._fallbacks.popitem(last=False)
        return Route(self.fallback_model, None, outcome)

    async def feedback(self, query_id: str, model_id: str, reward: float, cost: float,
                       domain: str | None = None) -> bool:
        """Queue the outcome of a routed query for publishing; False (nothing queued) for a
        query that fell back. ``flush`` waits until the broker has it, and raises
        ``FeedbackLost`` if it could not be published."""
        domain = domain or self.default_domain
        if (domain, query_id) in self._fallbacks:
            return False
        self._queue(_Outgoing(encode(Feedback(
            domain=domain, time=self.clock(), query_id=query_id, model_id=model_id,
            reward=reward, cost=cost)), domain.encode(), lost=self._feedback_lost))
        return True

    # --- inventory and stages --------------------------------------------------------------

    async def model_arrived(self, model_id: str, alpha: float, *, cost_min: float | None = None,
                            cost_max: float | None = None, price: float | None = None,
                            metadata: Mapping[str, Any] | None = None,
                            domain: str | None = None) -> None:
        await self.publish(ModelArrived(
            domain=domain or self.default_domain, time=self.clock(), model_id=model_id,
            alpha=alpha, cost_min=cost_min, cost_max=cost_max, price=price,
            metadata=dict(metadata or {})))

    async def model_expired(self, model_id: str, domain: str | None = None) -> None:
        await self.publish(ModelExpired(domain=domain or self.default_domain,
                                        time=self.clock(), model_id=model_id))

    async def stage_boundary(self, stage: int, domain: str | None = None) -> None:
        await self.publish(StageBoundary(domain=domain or self.default_domain,
                                         time=self.clock(), stage=stage))

    async def publish(self, event: Event) -> None:
        """Publish any event (after what is queued) and wait for the broker's ack."""
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(_Outgoing(encode(event), event.domain.encode(), acked=acked))
        await acked

    async def flush(self) -> None:
        """Wait until everything queued so far was acknowledged by the broker (or failed);
        raise ``FeedbackLost`` if feedback queued since the last flush was not published."""
        await self._sent_so_far()
        if self._producer is not None:
            await self._producer.flush()
            await asyncio.sleep(0)  # the sends' done callbacks run before we look
        if self._first_loss is not None:
            lost = FeedbackLost(self._lost, self._first_loss)
            self._lost, self._first_loss = 0, None
            raise lost

    # --- internals -------------------------------------------------------------------------

    def _feedback_lost(self, exc: BaseException) -> None:
        if self._first_loss is None:
            self._first_loss = exc
            log.warning("feedback not published: %r (the next flush raises FeedbackLost)", exc)
        self._lost += 1

    def _queue(self, outgoing: _Outgoing) -> None:
        if self._sender is None:
            raise RuntimeError("the client is not started (use `async with Client(...)`)")
        self._outbox.append(outgoing)
        self._wake.set()

    async def _sent_so_far(self) -> None:
        """Return once the sender has handed everything queued so far to the producer."""
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(_Outgoing(b"", b"", handed=marker))
        await marker

    async def _send_forever(self) -> None:
        """Hand the outbox to the producer in order; a send error settles what waits on it."""
        assert self._producer is not None
        send, topic, outbox = self._producer.send, self.names.events, self._outbox
        while True:
            if not outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = outbox.popleft()
            if item.handed is not None:
                _settle(item.handed, None)
                continue
            if item.decision is not None:
                self._queued_queries -= 1
                if item.decision.done():  # timed out while queued: sent all the same
                    item.decision = None
            try:
                sent = await send(topic, value=item.value, key=item.key)
            except asyncio.CancelledError:  # stop() gave up on the producer mid-send
                item.failed(ClientStopped())
                raise
            except KafkaError as exc:
                item.failed(exc)
                continue
            except Exception as exc:  # e.g. a message larger than the broker takes
                log.warning("event not published: %r", exc)
                item.failed(exc)
                continue
            if item.decision is not None or item.acked is not None or item.lost is not None:
                sent.add_done_callback(item.delivered)

    async def _read(self) -> None:
        assert self._consumer is not None
        consumer, pending = self._consumer, self._pending
        decisions = self.names.routing_decisions
        while True:
            fetched = await consumer.getmany(timeout_ms=1000)
            if not pending:
                continue
            for tp, records in fetched.items():
                for record in records:
                    try:
                        if tp.topic == decisions:
                            self._on_decision(record.value)
                        else:
                            self._on_dead_letter(record.value)
                    except Exception as exc:  # one odd message must not stop every route
                        log.warning("skipping an unreadable message at %s:%d (%s)",
                                    tp, record.offset, exc)

    def _on_decision(self, value: bytes) -> None:
        doc = json.loads(value)
        if doc.get("type") != "routing_decision":
            return
        future = self._pending.get((doc["domain"], doc["query_id"]))
        if future is not None and not future.done():
            future.set_result(RoutingDecision.model_validate(doc))

    def _on_dead_letter(self, value: bytes) -> None:
        doc = json.loads(value)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            event = json.loads(doc.get("payload") or "")
            if event.get("type") == "query":
                future = self._pending.get((doc["domain"], event.get("query_id")))
                if future is not None and not future.done():
                    future.set_result(str(doc["reason"]))


@dataclass(slots=True)
class _Outgoing:
    """One event in the outbox and who waits on it: a ``route`` (``decision``, told when
    sending fails), a ``publish`` (``acked``), ``flush`` (``handed``, a marker), or nobody (a
    feedback: ``lost`` is told when it fails)."""

    value: bytes
    key: bytes
    decision: asyncio.Future[RoutingDecision | str] | None = None
    acked: asyncio.Future[None] | None = None
    handed: asyncio.Future[None] | None = None
    lost: Callable[[BaseException], None] | None = None

    def failed(self, exc: BaseException) -> None:
        if self.lost is not None:
            self.lost(exc)
        if self.decision is not None:
            _settle(self.decision, f"unsent ({type(exc).__name__})")
        for waiting in (self.acked, self.handed):
            if waiting is not None and not waiting.done():
                waiting.set_exception(exc)

    def delivered(self, sent: asyncio.Future[Any]) -> None:
        error = None if sent.cancelled() else sent.exception()
        if sent.cancelled() or error is not None:
            self.failed(error or asyncio.CancelledError())
        elif self.acked is not None:
            _settle(self.acked, None)


def _settle(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


class SyncClient:
    """``Client`` for threaded code: its event loop runs on a thread of its own; every method
    blocks until done. Thread-safe."""

    def __init__(self, bootstrap: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="stageroute-client")
        self._thread.start()
        self.client = self._run(_make(bootstrap, options))
        self._run(self.client.start())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def route(self, query_id: str, features: QueryFeatures | None = None,
              domain: str | None = None, *, timeout: float | None = None) -> Route:
        return self._run(self.client.route(query_id, features, domain, timeout=timeout))

    def feedback(self, query_id: str, model_id: str, reward: float, cost: float,
                 domain: str | None = None) -> bool:
        return self._run(self.client.feedback(query_id, model_id, reward, cost, domain))

    def model_arrived(self, model_id: str, alpha: float, **options: Any) -> None:
        self._run(self.client.model_arrived(model_id, alpha, **options))

    def model_expired(self, model_id: str, domain: str | None = None) -> None:
        self._run(self.client.model_expired(model_id, domain))

    def stage_boundary(self, stage: int, domain: str | None = None) -> None:
        self._run(self.client.stage_boundary(stage, domain))

    def publish(self, event: Event) -> None:
        self._run(self.client.publish(event))

    def flush(self) -> None:
        self._run(self.client.flush())

    def close(self) -> None:
        try:
            self._run(self.client.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make(bootstrap: str, options: dict[str, Any]) -> Client:
    return Client(bootstrap, **options)  # built on the client's loop

"""The gateway client: ask stageroute which model serves a query, report how it went.

``Client`` (asyncio) publishes events with an idempotent acks=all producer and reads decisions
with ONE shared consumer; ``route`` publishes a query and awaits its decision (a future per
pending query, resolved by the consumer); ``SyncClient`` wraps it for threaded code::

    async with Client("127.0.0.1:19092", domains=["eu"], fallback_model="small") as client:
        route = await client.route("q-1", QueryFeatures(task="mbpp"), domain="eu")
        ...  # serve the query with route.model_id
        await client.feedback("q-1", route.model_id, reward=1.0, cost=0.0012, domain="eu")

**Timeout and fallback.** ``route`` waits ``timeout`` seconds (default 0.5) for publishing the
query and receiving its decision. Without a decision by then, when the query could not be
published (``unsent (...)``, a broker error), or when the worker rejects the query (a dead
letter: ``no_models``, ``duplicate_query``, ...), it returns the ``fallback_model`` with
``fallback`` set to why; with no fallback model configured it raises ``NoDecision``. A query
that was published is in the log either way, so the worker still decides it (late) and
stores that decision: its model is not the fallback the
gateway served, so ``feedback`` for a query that fell back is not sent (it would be a
``model_mismatch`` dead letter); the query stays awaiting feedback, its cost estimate counted as
spent by the budget ledger, until the engine forgets it (``max_tracked_queries``,
``query_ttl``).

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
from collections import OrderedDict
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


class NoDecision(RuntimeError):
    """No decision in time (or the query was rejected) and no fallback model configured."""

    def __init__(self, query_id: str, reason: str) -> None:
        super().__init__(f"query {query_id!r}: no decision ({reason})")
        self.query_id = query_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Route:
    """Where a query goes: ``model_id``; ``decision`` is the worker's (None on a fallback) and
    ``fallback`` why it fell back (``"timeout"`` or a dead letter's reason), else None."""

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
        self._sending: set[asyncio.Task[RoutingDecision | str]] = set()
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

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        for future in self._pending.values():
            future.cancel()
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
        domain = domain or self.default_domain
        query = Query(domain=domain, time=self.clock(), query_id=query_id, features=features)
        key = (domain, query_id)
        if key in self._pending:
            raise ValueError(f"query {query_id!r} of domain {domain!r} is already pending")
        future: asyncio.Future[RoutingDecision | str] = \
            asyncio.get_running_loop().create_future()
        self._pending[key] = future
        # One deadline for publishing and deciding (a producer whose buffer is full must not
        # hold the gateway longer than a slow worker may); at the deadline the query is still
        # sent, only its decision is no longer awaited.
        task = asyncio.ensure_future(self._decide(query, future))
        self._sending.add(task)
        task.add_done_callback(self._sent)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task),
                                             self.timeout if timeout is None else timeout)
        except TimeoutError:
            outcome = "timeout"
            future.cancel()
        except KafkaError as exc:
            outcome = f"unsent ({type(exc).__name__})"
        finally:
            self._pending.pop(key, None)
        if isinstance(outcome, RoutingDecision):
            return Route(outcome.model_id, outcome)
        if self.fallback_model is None:
            raise NoDecision(query_id, outcome)
        self._fallbacks[key] = None
        if len(self._fallbacks) > FALLBACKS_REMEMBERED:
            self._fallbacks.popitem(last=False)
        return Route(self.fallback_model, None, outcome)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:  # retrieved, and said
            log.debug("query not published: %r", task.exception())

    async def _decide(self, query: Query,
                      future: asyncio.Future[RoutingDecision | str]) -> RoutingDecision | str:
        sent = await self._send(query)
        sent.add_done_callback(lambda f: _fail_on_error(f, future))
        return await future

    async def feedback(self, query_id: str, model_id: str, reward: float, cost: float,
                       domain: str | None = None) -> bool:
        """Publish the outcome of a routed query; False (nothing sent) for a query that fell
        back. Returns once the producer has it (``flush`` waits for the broker)."""
        domain = domain or self.default_domain
        if (domain, query_id) in self._fallbacks:
            return False
        await self._send(Feedback(domain=domain, time=self.clock(), query_id=query_id,
                                  model_id=model_id, reward=reward, cost=cost))
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
        """Publish any event and wait for the broker's ack."""
        await (await self._send(event))

    async def flush(self) -> None:
        """Wait until everything sent so far is acknowledged by the broker."""
        if self._producer is not None:
            await self._producer.flush()

    # --- internals -------------------------------------------------------------------------

    async def _send(self, event: Event) -> asyncio.Future[Any]:
        if self._producer is None:
            raise RuntimeError("the client is not started (use `async with Client(...)`)")
        sent: asyncio.Future[Any] = await self._producer.send(
            self.names.events, value=encode(event), key=event.domain.encode())
        return sent

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


def _fail_on_error(sent: asyncio.Future[Any], decision: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None and not decision.done():
        decision.set_exception(sent.exception())  # type: ignore[arg-type]


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

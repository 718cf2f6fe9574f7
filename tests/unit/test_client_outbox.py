"""The client's outbox without a broker: what a gateway sees when the producer stalls or
fails (the real broker and worker are in tests/integration/test_client.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

import streams.client
from streams.client import Client


class StalledProducer:
    """``send`` records the event, then blocks (``stall``), raises (``error``) or hands back a
    delivery that fails (``undelivered``)."""

    def __init__(self, stall: bool = False, error: Exception | None = None,
                 undelivered: Exception | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.stall, self.error, self.undelivered = stall, error, undelivered

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent.append(json.loads(value))
        if self.error is not None:
            raise self.error
        if self.stall:
            await asyncio.Event().wait()
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.undelivered is not None:
            acked.set_exception(self.undelivered)
        else:
            acked.set_result(None)
        return acked

    async def flush(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def _client(producer: StalledProducer, **options: Any) -> Client:
    client = Client("unused:9092", fallback_model="small", **options)
    client._producer = producer  # type: ignore[assignment]
    client._sender = asyncio.ensure_future(client._send_forever())
    return client


def test_a_stalled_producer_makes_route_fall_back_at_its_deadline() -> None:
    async def scenario() -> tuple[Any, float]:
        client = await _client(StalledProducer(stall=True), timeout=0.05)
        started = time.monotonic()
        route = await client.route("q1")
        return route, time.monotonic() - started

    route, waited = asyncio.run(scenario())
    assert (route.model_id, route.fallback) == ("small", "timeout")
    assert waited < 1.0, "route never waits on the producer"


def test_a_full_outbox_falls_back_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams.client, "MAX_OUTBOX", 2)

    async def scenario() -> list[str | None]:
        client = await _client(StalledProducer(stall=True), timeout=0.2)
        routes = await asyncio.gather(*(client.route(f"q{i}") for i in range(4)))
        return [r.fallback for r in routes]

    # The four are queued before the sender runs: q0 and q1 fill the outbox (and time out
    # behind the stalled producer), q2 and q3 find it full.
    assert asyncio.run(scenario()) == ["timeout", "timeout", "unsent (backlog)",
                                       "unsent (backlog)"]


def test_a_send_error_falls_back_with_its_reason_and_order_is_kept() -> None:
    producer = StalledProducer(error=KafkaConnectionError())

    async def scenario() -> Any:
        client = await _client(producer, timeout=5.0)
        await client.feedback("q0", "large", 1.0, 0.01)
        return await client.route("q1")

    route = asyncio.run(scenario())
    assert (route.model_id, route.fallback) == ("small", "unsent (KafkaConnectionError)")
    assert [(e["type"], e["query_id"]) for e in producer.sent] == [
        ("feedback", "q0"), ("query", "q1")], "published in call order"


def test_stopping_tells_whoever_waits_on_what_was_not_sent() -> None:
    async def scenario() -> tuple[list[Any], BaseException | None, int]:
        client = await _client(StalledProducer(stall=True), timeout=0.05)
        routes = [asyncio.ensure_future(client.route(q, timeout=10.0)) for q in ("q1", "q2")]
        publish = asyncio.ensure_future(client.stage_boundary(1))
        await asyncio.sleep(0.01)  # q1 is with the stalled producer, q2 and the stage queued
        await client.stop()
        done = await asyncio.wait_for(asyncio.gather(*routes), 2.0)
        published = (await asyncio.gather(publish, return_exceptions=True))[0]
        return done, published, client._queued_queries

    routes, published, queued = asyncio.run(scenario())
    assert [(r.model_id, r.fallback) for r in routes] == [("small", "stopped")] * 2
    assert isinstance(published, streams.client.ClientStopped)
    assert queued == 0


def test_a_publish_the_producer_holds_at_stop_is_told() -> None:
    async def scenario() -> BaseException | None:
        client = await _client(StalledProducer(stall=True), timeout=0.05)
        publish = asyncio.ensure_future(client.stage_boundary(1))
        await asyncio.sleep(0.01)  # the stage is inside the stalled producer's send
        await client.stop()
        done = await asyncio.wait_for(asyncio.gather(publish, return_exceptions=True), 2.0)
        return done[0]

    assert isinstance(asyncio.run(scenario()), streams.client.ClientStopped)


@pytest.mark.parametrize("producer", [
    StalledProducer(error=KafkaConnectionError()),         # send raises
    StalledProducer(undelivered=KafkaConnectionError()),   # the broker never acknowledges
], ids=["send", "delivery"])
def test_feedback_that_is_not_published_makes_flush_raise(producer: StalledProducer) -> None:
    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        client = await _client(producer, timeout=0.05)
        await client.feedback("q0", "large", 1.0, 0.01)
        await client.feedback("q1", "large", 1.0, 0.01)
        first = (await asyncio.gather(client.flush(), return_exceptions=True))[0]
        again = (await asyncio.gather(client.flush(), return_exceptions=True))[0]
        return first, again

    first, again = asyncio.run(scenario())
    assert isinstance(first, streams.client.FeedbackLost) and first.count == 2
    assert isinstance(first.cause, KafkaConnectionError)
    assert again is None, "each loss is reported once"

"""A worker told to stop while it is still claiming partitions stops cleanly: the claim gives
up without raising (faust turns an exception in its assignment callback into a crash, exit 1)
and nothing of the unclaimed partitions is applied. A claim that fails while the worker runs
still raises once the retries give up for another reason."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.live.checkpoint import Checkpoint
from streams.live.health import Health, Metrics


class NeverAssigned:
    def assign(self, *args: Any) -> list[Any]:
        raise AssertionError("the processor must not claim anything")


def checkpoint(committed: Any) -> Checkpoint:
    return Checkpoint(NeverAssigned(), output=None, health=Health(Metrics(), 60.0),  # type: ignore[arg-type]
                      committed=committed)


def test_a_claim_retrying_at_stop_is_abandoned_without_raising() -> None:
    async def scenario() -> int:
        calls = 0
        point: Checkpoint

        async def coordinator_moving(tps: list[Any]) -> dict[Any, int]:
            nonlocal calls
            calls += 1
            if calls == 2:
                point.stopping.set()  # SIGTERM arrives while the claim backs off
            raise TimeoutError

        point = checkpoint(coordinator_moving)
        await point.on_assigned([("events", 0), ("events", 1)])
        point.thread.shutdown()
        return calls

    assert asyncio.run(scenario()) >= 2


def test_a_claim_failing_while_running_still_raises() -> None:
    async def scenario() -> None:
        async def broken(tps: list[Any]) -> dict[Any, int]:
            raise ValueError("not an outage")

        point = checkpoint(broken)
        try:
            await point.on_assigned([("events", 0)])
        finally:
            point.thread.shutdown()

    with pytest.raises(ValueError, match="not an outage"):
        asyncio.run(scenario())


def test_an_outage_without_a_message_is_retried_and_reported_by_its_type() -> None:
    """``TimeoutError()`` (what asyncio.wait_for raises) has an empty message; the retry
    must still log, back off and recover (it once raised IndexError formatting the warning)."""

    async def scenario() -> tuple[dict[Any, int], str]:
        failures = iter([TimeoutError()])
        point = checkpoint(None)
        seen = ""

        async def flaky() -> dict[Any, int]:
            nonlocal seen
            seen = point.health.problems.get("broker", seen)
            for exc in failures:
                raise exc
            return {("events", 0): 7}

        result = await point.retry("broker", flaky)
        point.thread.shutdown()
        return result, seen

    result, reported = asyncio.run(scenario())
    assert result == {("events", 0): 7}
    assert reported == "TimeoutError"

"""After ``Checkpoint.close`` a late rebalance neither hangs nor crashes the stop: faust may call
the assignment callbacks while its consumer shuts down, after the shared parts are closed. A
batch that was published but never stored (a database that hangs) stays unstored, its offsets
uncommitted: ``drain`` returns instead of waiting for a persister that is gone, a revocation
touches nothing, and a claim gives up quietly."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from streams.live.checkpoint import Checkpoint, Ticket
from streams.live.health import Health, Metrics
from streams.live.processor import Prepared

TP = ("events", 0)


class HangingDatabase:
    """A processor whose transaction hangs (for a second, so that its thread can end)."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def persist(self, batch: Prepared) -> None:
        threading.Event().wait(1.0)
        raise ConnectionError("never reached the database")

    def revoke(self, tps: Any) -> None:
        self.touched.append("revoke")

    def assign(self, tps: Any, committed: Any) -> list[Any]:
        self.touched.append("assign")
        return []


class NoOutput:
    async def stop(self) -> None:
        pass


def test_after_close_a_late_rebalance_neither_waits_nor_touches_the_processor() -> None:
    async def scenario() -> tuple[list[str], list[Any], int]:
        processor = HangingDatabase()

        async def committed(tps: Any) -> dict[Any, int]:
            raise TimeoutError  # the coordinator is going away too

        point = Checkpoint(processor, output=NoOutput(),  # type: ignore[arg-type]
                           health=Health(Metrics(), 60.0), committed=committed)
        offsets: list[Any] = []
        point.commit_offsets = lambda o: _record(offsets, o)
        batch = Prepared(offsets={TP: 10}, records=10)
        progress = point._start()
        point.pending.append(Ticket(1, batch, [], time.monotonic(),
                                    asyncio.get_running_loop().create_future()))
        async with progress:
            progress.notify_all()
        await point.close(timeout=0.2)
        # Each of these waited forever for the gone persister before the fix.
        await asyncio.wait_for(point.drain(), 2.0)
        await asyncio.wait_for(point.on_revoked([TP]), 2.0)
        await asyncio.wait_for(point.on_assigned([TP]), 2.0)
        return processor.touched, offsets, len(point.pending)

    touched, offsets, pending = asyncio.run(scenario())
    assert touched == [], "nothing claimed or dropped after close"
    assert offsets == [], "the unstored batch's offsets are not committed"
    assert pending == 1


async def _record(into: list[Any], offsets: Any) -> None:
    into.append(offsets)

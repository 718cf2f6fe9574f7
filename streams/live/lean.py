"""The worker on a plain aiokafka consumer loop (``--runtime aiokafka``): no faust.

Only the consume loop lives here; the commit protocol is ``streams.live.checkpoint`` (shared
with the faust runtime). Batches are ``consumer.getmany(max_records=batch_size)``, handed to
``Checkpoint.process``, which returns once the batch's decisions are published; the checkpoint
commits each batch's offsets (``commit_offsets``) once the batch is stored, while this loop
goes on fetching. Partitions are assigned with the
range assignor, which gives partition ``p`` of every input topic to the same worker, so a
domain (keyed to partition ``p`` of each topic) has exactly one owner. The rebalance listener
claims partitions on assignment and drops them on revocation (after the in-flight batch).

Broker and database outages are retried inside the checkpoint; the loop itself only waits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from streams.audit.store import AuditStore
from streams.live.checkpoint import Checkpoint
from streams.live.parts import Parts, build_parts
from streams.live.processor import Message
from streams.live.settings import WorkerSettings

log = logging.getLogger("stageroute.worker")


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.checkpoint.on_revoked((tp.topic, tp.partition) for tp in revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.checkpoint.on_assigned((tp.topic, tp.partition) for tp in assigned)


class LeanWorker:
    def __init__(self, settings: WorkerSettings, store: AuditStore) -> None:
        self.settings = settings
        self.parts: Parts = build_parts(settings, store)
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        s, parts = self.settings, self.parts
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await parts.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap, group_id=s.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=s.batch_size,
            fetch_max_wait_ms=max(1, int(s.batch_within * 1000)),
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout / 3) * 1000))
        checkpoint = parts.checkpoint
        checkpoint.commit_offsets = lambda offsets: consumer.commit(
            {TopicPartition(t, p): o for (t, p), o in offsets.items()})
        try:
            await checkpoint.retry("broker", consumer.start)
            consumer.subscribe(list(s.names.inputs), listener=_Ownership(checkpoint))
            while not self.stopping.is_set():
                checkpoint.check()
                fetched = await consumer.getmany(timeout_ms=int(s.batch_within * 1000),
                                                 max_records=s.batch_size)
                if fetched:
                    await checkpoint.process([
                        Message(r.topic, r.partition, r.offset, r.key, r.value)
                        for records in fetched.values() for r in records])
        except Exception as exc:
            parts.health.failed = repr(exc)
            log.exception("worker failed; exiting so a restart resumes from the database")
            raise
        finally:
            # What is applied is stored and its offsets committed before the consumer leaves.
            await checkpoint.close(timeout=s.session_timeout)
            try:
                await asyncio.wait_for(consumer.stop(), timeout=s.session_timeout)
            except Exception as exc:  # a dead broker must not keep us from exiting
                log.warning("consumer did not stop cleanly: %s", exc)
            await parts.stop()


def run_lean(settings: WorkerSettings, store: AuditStore) -> None:
    """Run until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    asyncio.run(LeanWorker(settings, store).run())

"""What the output topic already holds: the highest decision ``seq`` sent per domain.

Read once when the worker starts, from the tail of ``stageroute.routing-decisions``; the
processor re-sends stored decisions above it (see ``Processor._load``).
"""

from __future__ import annotations

import json
from typing import Final

from streams import topics

TAIL_WINDOW: Final = 50_000
"""Records read back per partition. A domain with no decision in that window is treated as
having none sent: all its stored decisions are sent again (consumers dedupe by query_id)."""


def last_sent_seqs(bootstrap: str, topic: str = topics.ROUTING_DECISIONS,
                   window: int = TAIL_WINDOW) -> dict[str, int]:
    """Highest ``seq`` per domain among the last ``window`` records of each partition."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=5000,
                             request_timeout_ms=30000)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        todo = {}
        for tp in tps:
            start = max(begins[tp], ends[tp] - window)
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
        found: dict[str, int] = {}
        while todo:
            batch = consumer.poll(timeout_ms=2000, max_records=10_000)
            if not batch:
                # Nothing more arrives although the end was not reached (e.g. transaction
                # markers at the end); stop rather than wait forever.
                if all(consumer.position(tp) >= end for tp, end in todo.items()):
                    break
                continue
            for records in batch.values():
                for record in records:
                    try:
                        doc = json.loads(record.value)
                        domain, seq = doc["domain"], doc["seq"]
                    except (ValueError, TypeError, KeyError):
                        continue
                    if isinstance(seq, int) and seq > found.get(domain, -1):
                        found[domain] = seq
            for tp in list(todo):
                if consumer.position(tp) >= todo[tp]:
                    del todo[tp]
        return found
    finally:
        consumer.close()

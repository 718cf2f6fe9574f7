"""Kafka topic names and settings, in one place.

Inputs, one topic per event type (``typed`` mode), plus ``stageroute.events`` carrying every
event type (``single`` mode). A partition of one topic is the only thing Kafka orders, so only
``stageroute.events`` gives an exact, deterministic order *across* event types: with typed
topics, whether a feedback is applied before or after the next query depends on fetch timing.
Use ``stageroute.events`` when decisions must be reproducible from the input log alone (the
journal in Postgres makes any order auditable either way).

Outputs: ``stageroute.routing-decisions`` (routing and deployment decisions, what the serving
gateway acts on) and ``stageroute.dead-letters``. Every message is keyed by its routing domain,
so one domain stays on one partition (single writer, ordered).

``create_topics`` is idempotent (``stageroute topics create``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

DEFAULT_PREFIX: Final = "stageroute"
TOPIC_MODES: Final = ("typed", "single")
_TYPED_SUFFIXES: Final = {
    "model_arrived": "model-arrivals",
    "model_expired": "model-expiries",
    "query": "queries",
    "feedback": "feedback",
    "stage_boundary": "stage-boundaries",
}


@dataclass(frozen=True)
class TopicNames:
    """Every topic name under one prefix (``stageroute`` unless ``--topic-prefix`` or
    ``STAGEROUTE_TOPIC_PREFIX`` says otherwise: tests and side-by-side deployments)."""

    prefix: str = DEFAULT_PREFIX

    def _name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    @property
    def events(self) -> str:
        return self._name("events")

    @property
    def routing_decisions(self) -> str:
        return self._name("routing-decisions")

    @property
    def dead_letters(self) -> str:
        return self._name("dead-letters")

    @property
    def typed_inputs(self) -> dict[str, str]:
        """Event ``type`` -> its input topic in ``typed`` mode."""
        return {kind: self._name(suffix) for kind, suffix in _TYPED_SUFFIXES.items()}

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every topic the worker consumes."""
        return (*self.typed_inputs.values(), self.events)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.routing_decisions, self.dead_letters)

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.inputs, *self.outputs)

    def topic_for(self, event_type: str, mode: str) -> str:
        """The input topic an event of ``event_type`` is published to in ``mode``."""
        if mode == "single":
            return self.events
        return self.typed_inputs.get(event_type, self.events)


DEFAULT: Final = TopicNames()
MODEL_ARRIVALS: Final = DEFAULT.typed_inputs["model_arrived"]
MODEL_EXPIRIES: Final = DEFAULT.typed_inputs["model_expired"]
QUERIES: Final = DEFAULT.typed_inputs["query"]
FEEDBACK: Final = DEFAULT.typed_inputs["feedback"]
STAGE_BOUNDARIES: Final = DEFAULT.typed_inputs["stage_boundary"]
EVENTS: Final = DEFAULT.events
ROUTING_DECISIONS: Final = DEFAULT.routing_decisions
DEAD_LETTERS: Final = DEFAULT.dead_letters


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


def specs(partitions: int = 1, replication: int = 1,
          names: TopicNames = DEFAULT) -> list[TopicSpec]:
    """Every topic with ``partitions`` partitions. Inputs and outputs get the same count, so a
    domain's decisions land on the partition number its inputs use (same key, same hash)."""
    # Dead letters are kept longer: they are what an operator reads after the fact.
    long = {"retention.ms": str(30 * 24 * 3600 * 1000)}
    return [TopicSpec(name, partitions, replication,
                      dict(long) if name == names.dead_letters else {})
            for name in names.all]


def create_topics(bootstrap: str, topics: Iterable[TopicSpec]) -> tuple[list[str], list[str]]:
    """Create the topics that do not exist yet; returns (created, already existing).

    Existing topics are left as they are (a partition count is never changed here: that
    would move domains between partitions)."""
    from kafka.admin import NewTopic

    admin: Any = _admin(bootstrap, "stageroute-topics")
    try:
        existing = set(admin.list_topics())
        wanted = list(topics)
        new = [NewTopic(t.name, t.partitions, t.replication, topic_configs=dict(t.config))
               for t in wanted if t.name not in existing]
        if new:
            from kafka.errors import TopicAlreadyExistsError

            # A concurrent creator may win the race: fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=15000)
        return [t.name for t in new], [t.name for t in wanted if t.name in existing]
    finally:
        admin.close()


def _admin(bootstrap: str, client_id: str) -> object:
    """An admin client that gives up on an unreachable broker within seconds."""
    from kafka.admin import KafkaAdminClient

    wanted = dict(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=15000,
                  api_version_auto_timeout_ms=5000, bootstrap_timeout_ms=5000,
                  reconnect_backoff_max_ms=1000)
    # kafka-python 2.x lacks some of these options; keep the ones it knows.
    known = KafkaAdminClient.DEFAULT_CONFIG
    return KafkaAdminClient(**{k: v for k, v in wanted.items()
                               if k == "bootstrap_servers" or k in known})


def describe(bootstrap: str) -> dict[str, int]:
    """Every topic on the broker with its partition count (raises ``KafkaError``, e.g.
    ``NoBrokersAvailable``, when the broker cannot be reached)."""
    admin: Any = _admin(bootstrap, "stageroute-topics")
    try:
        # kafka-python 3 names the key "name", 2.x "topic".
        return {t.get("name") or t["topic"]: len(t["partitions"])
                for t in admin.describe_topics() if not t.get("error_code")}
    finally:
        admin.close()

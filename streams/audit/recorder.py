"""The audit trail as the backtest's recorder (``stageroute.backtest.runner.Recorder``): batches
journal entries and decisions into one-transaction writes of the audit store
(see ``streams.audit.store``)."""

from __future__ import annotations

import os
from typing import Any

from schemas import (
    DeadLetter,
    DeploymentDecision,
    Event,
    ModelArrived,
    ModelExpired,
    RoutingDecision,
    encode,
)
from stageroute.engine import EngineConfig, Output
from streams.audit.embedded import resolve_url
from streams.audit.migrate import upgrade
from streams.audit.store import AuditStore

#: Decision fields that are per run or implied by the table.
ENVELOPE = frozenset({"schema_version", "type", "domain"})
#: Journal entries per write transaction: large enough to amortise a round trip, small enough
#: to bound memory.
BATCH = 20_000


def open_store(url: str | None, data_dir: str | None = None) -> AuditStore:
    """The audit store at ``url`` (else ``STAGEROUTE_DB_URL``, else the embedded PostgreSQL in
    ``data_dir`` or its default), migrated to the newest schema."""
    resolved = resolve_url(url or os.environ.get("STAGEROUTE_DB_URL"), data_dir=data_dir)
    upgrade(resolved)
    return AuditStore(resolved)


def decision_row(output: Output) -> dict[str, Any]:
    return {k: v for k, v in output.model_dump().items() if k not in ENVELOPE}


def registry_row(event: Event, seq: int) -> dict[str, Any] | None:
    """The model-registry change an applied event makes (an arrival or an expiry), if any."""
    if isinstance(event, ModelArrived):
        return {"model_id": event.model_id, "alpha": event.alpha, "cost_min": event.cost_min,
                "cost_max": event.cost_max, "metadata": dict(event.metadata),
                "arrived_seq": seq}
    if isinstance(event, ModelExpired):
        return {"model_id": event.model_id, "expired_seq": seq}
    return None


class AuditRecorder:
    """Writes each run's journal and decisions; one run at a time.

    ``invocation_id`` links the runs of one backtest command. With ``defer_finish`` a run's
    ``finish_run`` only writes what is buffered: whoever has the oracle's results (the
    backtest command, for runs made in worker processes) marks it finished with its summary.
    """

    def __init__(self, store: AuditStore, kind: str, meta: dict[str, Any],
                 invocation_id: str | None = None, defer_finish: bool = False) -> None:
        self.store = store
        self.kind = kind
        self.meta = meta
        self.invocation_id = invocation_id
        self.defer_finish = defer_finish
        self.run_id: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.journal: list[dict[str, Any]] = []
        self.routing: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.models: list[dict[str, Any]] = []

    def start_run(self, config: EngineConfig, meta: dict[str, Any]) -> str:
        self._reset()
        self.run_id = self.store.create_run(
            self.kind, {**config.model_dump(mode="json")}, config.seed, config.domain,
            config.policy, invocation_id=self.invocation_id)
        return self.run_id

    def record(self, seq: int, event: Event, outputs: list[Output]) -> None:
        self.journal.append({"seq": seq, "event_type": event.type, "event": encode(event)})
        accepted = True
        for out in outputs:
            if isinstance(out, RoutingDecision):
                self.routing.append(decision_row(out))
            elif isinstance(out, DeploymentDecision):
                self.deployments.append(decision_row(out))
            elif isinstance(out, DeadLetter):
                accepted = False
                self.dead_letters.append(decision_row(out))
        registry = registry_row(event, seq) if accepted else None
        if registry is not None:
            self.models.append(registry)
        if len(self.journal) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.run_id is None or not self.journal:
            return
        self.store.write_batch(self.run_id, journal=self.journal, routing=self.routing,
                               deployments=self.deployments, dead_letters=self.dead_letters,
                               models=self.models)
        self._reset()

    def finish_run(self, summary: dict[str, Any]) -> None:
        self.flush()
        if self.run_id is not None and not self.defer_finish:
            self.store.finish_run(self.run_id, {**self.meta, **summary})

"""The gateway client against a real broker, a real worker and PostgreSQL.

A gateway's day: models arrive, a stage starts, queries are routed concurrently and each gets
the worker's decision (the same row the audit trail stores), feedback is reported; a query
that times out falls back to the configured model and its feedback is withheld; a rejected
query falls back at once with the dead letter's reason, or raises without a fallback; the sync
wrapper does the same from a thread. The run then verifies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas import QueryFeatures
from stageroute.engine import EngineConfig
from stageroute.verify import verify
from streams.client import Client, NoDecision, SyncClient, partition_of
from tests.integration.livekit import wait_for

pytestmark = pytest.mark.integration

DOMAIN = "eu"
MODELS = {"small": 0.0004, "medium": 0.0011, "large": 0.003}


async def _gateway(env: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with Client(env.bootstrap, domains=[DOMAIN], default_domain=DOMAIN,
                      fallback_model="small", timeout=30.0,
                      topic_prefix=env.names.prefix) as client:
        seen["partitions"] = client.partitions
        for model, price in MODELS.items():
            await client.model_arrived(model, 0.6, price=price, cost_max=10 * price)
        await client.stage_boundary(0)
        routes = await asyncio.gather(*(
            client.route(f"q{i}", QueryFeatures(task="mbpp", prompt_tokens=i))
            for i in range(60)))
        for i, route in enumerate(routes):
            assert route.decision is not None and route.fallback is None
            assert route.decision.query_id == f"q{i}" and route.model_id in MODELS
            assert await client.feedback(f"q{i}", route.model_id, reward=0.5 + i / 200,
                                         cost=MODELS[route.model_id])
        seen["routes"] = {f"q{i}": r.model_id for i, r in enumerate(routes)}

        late = await client.route("late", timeout=0.0)
        assert (late.model_id, late.decision, late.fallback) == ("small", None, "timeout")
        assert not await client.feedback("late", "small", 1.0, 0.001), "withheld"

        again = await client.route("q0")
        assert (again.model_id, again.fallback) == ("small", "duplicate_query")
        client.fallback_model = None
        with pytest.raises(NoDecision, match="duplicate_query"):
            await client.route("q1")
        await client.flush()
    return seen


def test_a_gateway_routes_reports_and_falls_back_through_the_real_worker(
        stream_env_factory: Any) -> None:
    env = stream_env_factory(partitions=4)
    worker = env.start_worker("aiokafka")
    seen = asyncio.run(_gateway(env))
    assert seen["partitions"] == [partition_of(DOMAIN, 4)], "only its domain's partition"

    with SyncClient(env.bootstrap, default_domain=DOMAIN, timeout=30.0,
                    topic_prefix=env.names.prefix) as sync:
        route = sync.route("sync-1")
        assert route.decision is not None
        assert sync.feedback("sync-1", route.model_id, 1.0, MODELS[route.model_id])
        sync.flush()
        seen["routes"]["sync-1"] = route.model_id

    run_id = env.run_id(DOMAIN)
    # 3 arrivals, a stage, 61 + 1 (late) + 2 (duplicates) queries, 61 feedbacks
    wait_for(lambda: env.count("event_journal", [run_id]) >= 3 + 1 + 64 + 61, 60,
             "every event stored", [worker])
    assert worker.stop() == 0
    with env.store() as store:
        rows = {r["query_id"]: r for r in store.routing_decisions(run_id)}
        assert {q: rows[q]["model_id"] for q in seen["routes"]} == seen["routes"], \
            "each query went to the model stageroute stored"
        assert "late" in rows, "a query that timed out is still decided and stored"
        journal = [e for _, e in store.journal(run_id)]
        feedback = {e["query_id"]: e for e in journal if e["type"] == "feedback"}
        assert set(feedback) == set(seen["routes"]), "feedback of every routed query, not late"
        assert all(feedback[q]["model_id"] == m for q, m in seen["routes"].items())
        letters = sorted(d["reason"] for d in store.dead_letters(run_id))
        assert letters == ["duplicate_query", "duplicate_query"]
        config = EngineConfig.model_validate(store.get_run(run_id)["config"])
        report = verify(config, store.journal(run_id), store.routing_decisions(run_id),
                        store.deployment_decisions(run_id))
        assert report.mismatches == [] and report.routing_checked == len(rows)

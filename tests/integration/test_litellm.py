"""The LiteLLM strategy: a real ``litellm.Router`` (deployments answer with ``mock_response``,
no network) routed by a real worker through the real broker, with PostgreSQL behind it.

Every request goes to the deployment of the model stageroute decided (the decision row the
audit trail stores for its query id), and its feedback reaches the journal with LiteLLM's
response cost and the reward the user's callable gave.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download

import litellm

from stageroute.engine import EngineConfig
from stageroute.verify import verify
from streams.client import Client
from streams.litellm_strategy import QUERY_ID, StageRouteStrategy
from tests.integration.livekit import wait_for

pytestmark = pytest.mark.integration

DOMAIN = "chat"
GROUP = "assistant"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo")  # priced in LiteLLM's bundled cost map
REWARD = {"gpt-4o-mini": 0.25, "gpt-4o": 0.75, "gpt-3.5-turbo": 0.5}
REQUESTS = 24


def reward(response: Any, kwargs: dict[str, Any]) -> float:
    """A user's reward: by the model that answered (read back from the response)."""
    return REWARD[response._hidden_params["model_id"]]


async def _gateway(env: Any) -> list[tuple[str, str, float]]:
    router = litellm.Router(model_list=[  # type: ignore[attr-defined]
        {"model_name": GROUP, "model_info": {"id": model},
         "litellm_params": {"model": model, "mock_response": f"an answer from {model}"}}
        for model in MODELS])
    async with Client(env.bootstrap, domains=[DOMAIN], default_domain=DOMAIN, timeout=30.0,
                      topic_prefix=env.names.prefix) as client:
        for model in MODELS:
            await client.model_arrived(model, 0.6)
        await client.stage_boundary(0)
        strategy = StageRouteStrategy(router, client, reward=reward).install()
        try:
            responses = await asyncio.gather(*(
                router.acompletion(model=GROUP, metadata={QUERY_ID: f"req-{i}"},
                                   messages=[{"role": "user", "content": "x" * (8 * i)}])
                for i in range(REQUESTS)))
            await asyncio.sleep(0.5)  # litellm runs its success callbacks after returning
            await strategy.flush()
        finally:
            litellm.callbacks.remove(strategy.reporter)
    served = []
    for i, response in enumerate(responses):
        model = response._hidden_params["model_id"]
        assert response.choices[0].message.content == f"an answer from {model}"
        served.append((f"req-{i}", model, float(response._hidden_params["response_cost"])))
    return served


def test_a_litellm_router_serves_each_request_with_the_model_stageroute_chose(
        stream_env_factory: Any) -> None:
    env = stream_env_factory()
    worker = env.start_worker("aiokafka")
    served = asyncio.run(_gateway(env))
    run_id = env.run_id(DOMAIN)
    # 3 arrivals, a stage boundary, a query and a feedback per request
    wait_for(lambda: env.count("event_journal", [run_id]) >= 4 + 2 * REQUESTS, 60,
             "every event stored", [worker])
    assert worker.stop() == 0
    with env.store() as store:
        decided = {r["query_id"]: r["model_id"] for r in store.routing_decisions(run_id)}
        assert {q: m for q, m, _ in served} == decided, "each request served by the choice"
        feedback = {e["query_id"]: e for _, e in store.journal(run_id)
                    if e["type"] == "feedback"}
        for query_id, model, cost in served:
            sent = feedback[query_id]
            assert sent["model_id"] == model and sent["reward"] == REWARD[model]
            assert sent["cost"] == pytest.approx(cost) and cost > 0, "LiteLLM's response cost"
        config = EngineConfig.model_validate(store.get_run(run_id)["config"])
        report = verify(config, store.journal(run_id), store.routing_decisions(run_id),
                        store.deployment_decisions(run_id))
        assert report.mismatches == [] and report.routing_checked == REQUESTS

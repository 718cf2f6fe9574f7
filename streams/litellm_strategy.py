"""stageroute as the routing strategy of a ``litellm.Router`` (extra ``stageroute[litellm]``).

Each deployment of a model group names the stageroute model it serves (``model_info.id`` by
default, ``model_id_of`` otherwise); those models must have arrived in the domain
(``Client.model_arrived``). Then::

    router = litellm.Router(model_list=[
        {"model_name": "chat", "litellm_params": {"model": "gpt-4o-mini"},
         "model_info": {"id": "gpt-4o-mini"}}, ...])
    async with Client(bootstrap, domains=["eu"], default_domain="eu",
                      fallback_model="gpt-4o-mini") as client:
        StageRouteStrategy(router, client, reward=my_reward).install()
        response = await router.acompletion(model="chat", messages=[...])

**Per request** (``async_get_available_deployment``): the query id is the request's
``metadata["stageroute_query_id"]`` if the caller set one, else a new UUID, written back into
the metadata (that is how the feedback finds it, and how a retry of the same request gets the
same deployment instead of a duplicate query). ``features(model_group, messages)`` describes
the query (default: the group as the task, prompt length as characters / 4).
``client.route`` returns the model; the request goes to the group's deployment of that model.
When the client falls back (timeout, rejected query) or the chosen model has no deployment in
the group, the fallback model's deployment serves, else the group's first; no feedback is sent
for such a request (see ``streams.client``).

**Feedback** (a litellm callback, installed by ``install``): on success, cost = LiteLLM's
``response_cost`` for the call (0.0 when LiteLLM cannot price the model) and reward =
``reward(response, kwargs)``, a user callable returning a number in [0, 1]; the documented
default scores every successful response 1.0, which makes stageroute minimise cost among
models that answer. On failure the reward is ``failure_reward`` (default 0.0) and the cost
LiteLLM reports (usually 0.0).

Only the async API (``router.acompletion`` and friends) is routed: the client lives on the
caller's event loop. The sync ``router.completion`` raises a clear error.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import CustomRoutingStrategyBase

from schemas import QueryFeatures
from streams.client import Client

log = logging.getLogger("stageroute.litellm")

QUERY_ID = "stageroute_query_id"
MODEL_ID = "stageroute_model_id"
FALLBACK = "stageroute_fallback"

Reward = Callable[[Any, dict[str, Any]], float]
Features = Callable[[str, list[dict[str, Any]] | None], QueryFeatures | None]


def succeeded(response: Any, kwargs: dict[str, Any]) -> float:
    """The default reward: 1.0 for any successful response."""
    return 1.0


def prompt_features(model_group: str, messages: list[dict[str, Any]] | None) -> QueryFeatures:
    """The default features: the model group as the task, the prompt's characters / 4 as its
    length in tokens (a rough, tokenizer-free estimate)."""
    chars = sum(len(str(m.get("content") or "")) for m in messages or ())
    return QueryFeatures(task=model_group, prompt_tokens=chars // 4)


def deployment_id(deployment: dict[str, Any]) -> str:
    """The default ``model_id_of``: the deployment's ``model_info.id``."""
    return str((deployment.get("model_info") or {}).get("id"))


class StageRouteStrategy(CustomRoutingStrategyBase):
    """Routes each request of a ``litellm.Router`` through a stageroute ``Client`` and reports
    its outcome (see the module docstring)."""

    def __init__(self, router: Any, client: Client, *, domain: str | None = None,
                 reward: Reward = succeeded, failure_reward: float = 0.0,
                 features: Features = prompt_features,
                 model_id_of: Callable[[dict[str, Any]], str] = deployment_id) -> None:
        self.router = router
        self.client = client
        self.domain = domain or client.default_domain
        self.reward = reward
        self.failure_reward = failure_reward
        self.features = features
        self.model_id_of = model_id_of
        self.reporter = _Reporter(self)
        self._feedback: set[asyncio.Task[bool]] = set()

    def install(self) -> StageRouteStrategy:
        """Make this the router's routing strategy and report outcomes through litellm's
        callbacks."""
        import litellm

        self.router.register_plugin(self)
        if self.reporter not in litellm.callbacks:
            litellm.callbacks.append(self.reporter)
        return self

    def _group(self, model: str) -> list[dict[str, Any]]:
        group = [d for d in self.router.registry().all() if d.get("model_name") == model]
        if not group:
            raise ValueError(f"no deployment in model group {model!r}")
        return group

    async def async_get_available_deployment(  # type: ignore[override]  # returns one
            self, model: str, messages: list[dict[str, Any]] | None = None,
            input: Any = None, specific_deployment: bool | None = False,
            request_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        group = self._group(model)
        metadata = (request_kwargs or {}).setdefault("metadata", {})
        if metadata is None:
            metadata = request_kwargs["metadata"] = {}  # type: ignore[index]
        if MODEL_ID in metadata:  # a retry of a routed request: the same model again
            chosen, fallback = metadata[MODEL_ID], metadata.get(FALLBACK)
        else:
            query_id = metadata.setdefault(QUERY_ID, str(uuid.uuid4()))
            route = await self.client.route(query_id, self.features(model, messages),
                                            self.domain)
            chosen, fallback = route.model_id, route.fallback
        by_model = {self.model_id_of(d): d for d in group}
        deployment = by_model.get(chosen)
        if deployment is None:
            log.warning("model %r (stageroute's choice) has no deployment in group %r; "
                        "serving with the group's first", chosen, model)
            deployment, fallback = group[0], fallback or "no_deployment"
            chosen = self.model_id_of(deployment)
        metadata[MODEL_ID] = chosen
        if fallback is not None:
            metadata[FALLBACK] = fallback
        return deployment

    def get_available_deployment(self, model: str, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the stageroute strategy routes the async API only: call "
                        "router.acompletion (the client runs on the caller's event loop)")

    def report(self, kwargs: dict[str, Any], response: Any, success: bool) -> None:
        """Send the feedback of one finished call (no-op for calls it did not route or that
        fell back)."""
        metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        query_id, model_id = metadata.get(QUERY_ID), metadata.get(MODEL_ID)
        if query_id is None or model_id is None or FALLBACK in metadata:
            return
        cost = float(kwargs.get("response_cost") or 0.0)
        reward = float(self.reward(response, kwargs)) if success else self.failure_reward
        task = asyncio.ensure_future(self.client.feedback(query_id, model_id, reward, cost,
                                                          self.domain))
        self._feedback.add(task)  # a strong reference until it is sent
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[bool]) -> None:
        self._feedback.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("feedback not sent: %s", task.exception())

    async def flush(self) -> None:
        """Wait until every feedback reported so far is acknowledged by the broker; raises
        ``streams.client.FeedbackLost`` if some could not be published."""
        while self._feedback:
            await asyncio.gather(*self._feedback, return_exceptions=True)
        await self.client.flush()


class _Reporter(CustomLogger):
    """The litellm callback that turns finished calls into stageroute feedback."""

    def __init__(self, strategy: StageRouteStrategy) -> None:
        super().__init__()
        self.strategy = strategy

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self.strategy.report(kwargs, response_obj, success=True)

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        self.strategy.report(kwargs, response_obj, success=False)

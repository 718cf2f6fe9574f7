"""Outputs, version 1: routing decisions, deployment decisions and dead letters.

A decision records the journal sequence number ``seq`` of the state it was made at and every
input of its optimisation (models, bounds, shares, budget) next to its result, so that replaying
the journal can recompute and compare it. Per-model lists are parallel: element ``i`` of
``mu_u``, ``c_l``, ``alpha``, ``p``/``d`` belongs to model ``i`` of ``deployed``/``candidates``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, Field, Strict, model_validator

from schemas.base import (
    ContractModel,
    Domain,
    Finite,
    Index,
    ModelId,
    Probability,
    QueryId,
    Seconds,
    Share,
    Text,
    UnitDraw,
    UsdOut,
)

MAX_PAYLOAD_BYTES: Final = 64 * 1024
"""Dead-letter payloads are cut to this many UTF-8 bytes."""

MAX_DETAIL_BYTES: Final = 4 * 1024
"""Dead-letter details are cut to this many UTF-8 bytes."""


def clip_text(text: str, max_bytes: int) -> str:
    """Make ``text`` storable and bounded: NUL -> ``\\x00``, lone surrogates -> ``\\udXXX``,
    then cut to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    raw = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace")
    return raw[:max_bytes].decode("utf-8", "ignore")


def _clip_payload(text: str) -> str:
    return clip_text(text, MAX_PAYLOAD_BYTES)


def _clip_detail(text: str) -> str:
    return clip_text(text, MAX_DETAIL_BYTES)


class DeadLetterReason(StrEnum):
    """Why an input event was rejected. The value is the stable code stored and published."""

    MALFORMED = "malformed"
    """Not JSON, or not a JSON object."""
    SCHEMA_MISMATCH = "schema_mismatch"
    """Missing, extra or wrongly typed field, or unknown event type."""
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    """``schema_version`` other than 1."""
    REWARD_OUT_OF_RANGE = "reward_out_of_range"
    """Reward outside [0, 1] or not finite."""
    INVALID_COST = "invalid_cost"
    """A cost (``cost``, ``cost_min``, ``cost_max``) negative, not finite, or min > max."""
    INVALID_VALUE = "invalid_value"
    """Any other field constraint, e.g. alpha outside (0, 1] or a blank identifier."""
    UNKNOWN_MODEL = "unknown_model"
    """The event names a model that is not live."""
    DUPLICATE_MODEL = "duplicate_model"
    """A model arrives under an identifier that is already live."""
    UNKNOWN_QUERY = "unknown_query"
    """Feedback for a query that was never routed."""
    DUPLICATE_QUERY = "duplicate_query"
    """A query identifier seen before."""
    DUPLICATE_FEEDBACK = "duplicate_feedback"
    """Second feedback for the same query."""
    MODEL_MISMATCH = "model_mismatch"
    """Feedback names a model other than the one the query was routed to."""
    NO_MODELS = "no_models"
    """A query arrives while no model can be routed to."""
    STALE_STAGE = "stale_stage"
    """A stage boundary whose index is not greater than the current stage."""
    KEY_MISMATCH = "key_mismatch"
    """The Kafka message key is not the event's domain (or the domain is consumed from
    another partition): the event could land with another domain's owner."""
    INTERNAL_ERROR = "internal_error"
    """Applying the event raised inside the engine or a solver; the state is as before it."""


class DecisionBase(ContractModel):
    """Fields common to every output record."""

    schema_version: Literal[1] = 1
    """Wire format version; only 1 exists."""
    type: str
    """Record type discriminator."""
    domain: Domain
    """Routing domain the record belongs to."""


def _check_parallel(
    key: str, keys: Sequence[str], columns: Mapping[str, Sequence[object]], min_len: int
) -> None:
    if len(keys) < min_len:
        raise ValueError(f"{key} must have at least {min_len} element(s)")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{key} has duplicate entries")
    for name, column in columns.items():
        if len(column) != len(keys):
            raise ValueError(
                f"{name} has {len(column)} element(s), {key} has {len(keys)}; they are parallel"
            )


class RoutingDecision(DecisionBase):
    """RouteOPT's distribution over the deployed set for one query, and the model drawn."""

    type: Literal["routing_decision"] = "routing_decision"
    """Record type discriminator."""
    query_id: QueryId
    """The routed query."""
    seq: Index
    """Journal sequence number of the query event the decision was made at."""
    stage: Index
    """Stage index in force."""
    time: Seconds
    """Event time of the query."""
    policy: Text
    """Name of the routing policy."""
    model_id: ModelId
    """The chosen model; an element of deployed."""
    deployed: list[ModelId]
    """Deployed models considered (>= 1, distinct); the index order of the parallel lists."""
    mu_u: list[Probability]
    """Reward score per deployed model (StageRoute: the reward upper confidence bound)."""
    c_l: list[UsdOut]
    """Cost score per deployed model in RouteOPT's budget constraint, USD: the cost estimate
    (the price prior, then the observed mean), or the cost lower confidence bound for
    ``stageroute_paper``."""
    alpha: list[Probability]
    """RouteOPT's cap per deployed model: its throughput share, or 0 where the budget ledger
    could not afford the model for this query."""
    budget: UsdOut
    """The budget RouteOPT got for this query, USD: the ledger's paced budget, or the nominal
    budget when the ledger is off."""
    p: list[Probability]
    """Routing probability per deployed model."""
    draw: UnitDraw
    """Uniform draw in [0, 1) from the per-query generator, mapped through p."""
    status: Text
    """Solver status, e.g. "optimal" or an infeasibility fallback."""
    cached: bool = False
    """The distribution was reused from a cache rather than re-solved."""

    @model_validator(mode="after")
    def _parallel_lists(self) -> Self:
        columns = {"mu_u": self.mu_u, "c_l": self.c_l, "alpha": self.alpha, "p": self.p}
        _check_parallel("deployed", self.deployed, columns, min_len=1)
        if self.model_id not in self.deployed:
            raise ValueError(f"model_id {self.model_id!r} is not in deployed")
        return self


class DeploymentDecision(DecisionBase):
    """DeployOPT's choice of the deployment set at a stage start (or a forced re-decision)."""

    type: Literal["deployment_decision"] = "deployment_decision"
    """Record type discriminator."""
    seq: Index
    """Journal sequence number of the event the decision was made at."""
    stage: Index
    """Stage index the deployment set is for."""
    time: Seconds
    """Event time of the triggering event."""
    policy: Text
    """Name of the deployment policy."""
    reason: Literal["stage_boundary", "initial", "deployed_set_empty", "model_arrived"]
    """What triggered it: a stage start, the first query, every deployed model gone, or (for
    policies without stage commitment) a model arrival."""
    candidates: list[ModelId]
    """Live models considered (distinct); the index order of the parallel lists."""
    mu_u: list[Probability]
    """Reward upper confidence bound per candidate."""
    c_l: list[UsdOut]
    """Cost lower confidence bound per candidate, USD."""
    alpha: list[Share]
    """Throughput share cap per candidate."""
    budget: UsdOut
    """Average per-query cost budget b, USD."""
    m_max: Annotated[int, Strict(), Field(ge=1)]
    """Maximum number of models deployed at once."""
    selected: list[ModelId]
    """The deployment set: distinct candidates, at most m_max."""
    d: list[Finite]
    """DeployOPT weight per candidate, in [0, alpha] up to the MIP solver's tolerance (not
    range-checked, so that a -1e-12 does not make the record unreadable); its support is the
    selected set."""
    objective: Finite
    """DeployOPT objective value, sum of d * mu_u."""
    status: Text
    """Solver status."""

    @model_validator(mode="after")
    def _consistent_sets(self) -> Self:
        columns = {"mu_u": self.mu_u, "c_l": self.c_l, "alpha": self.alpha, "d": self.d}
        _check_parallel("candidates", self.candidates, columns, min_len=0)
        if len(set(self.selected)) != len(self.selected):
            raise ValueError("selected has duplicate entries")
        outside = [m for m in self.selected if m not in self.candidates]
        if outside:
            raise ValueError(f"selected models not among candidates: {outside!r}")
        if len(self.selected) > self.m_max:
            raise ValueError(f"{len(self.selected)} models selected, m_max is {self.m_max}")
        return self


class DeadLetter(DecisionBase):
    """An input event that was rejected, with the reason; processing continued without it."""

    type: Literal["dead_letter"] = "dead_letter"
    """Record type discriminator."""
    seq: Index | None = None
    """Journal sequence number, when the event was journaled before being rejected."""
    reason: DeadLetterReason
    """Stable reason code."""
    detail: Annotated[str, Strict(), AfterValidator(_clip_detail)]
    """Human-readable explanation: which field and why."""
    payload: Annotated[str, Strict(), AfterValidator(_clip_payload)]
    """The raw event text as received, cut to 64 KiB of UTF-8; NUL is written as \\x00."""


Decision = Annotated[
    RoutingDecision | DeploymentDecision | DeadLetter,
    Field(discriminator="type"),
]
"""Any output record, discriminated by ``type``."""

DECISION_TYPES: Final[Mapping[str, type[DecisionBase]]] = MappingProxyType(
    {
        cls.model_fields["type"].default: cls
        for cls in (RoutingDecision, DeploymentDecision, DeadLetter)
    }
)
"""Decision ``type`` value -> class."""

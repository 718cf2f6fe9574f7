"""Input events, version 1: what producers publish and the engine folds into its state.

Every event carries ``schema_version``, a ``type`` discriminator, the routing ``domain`` (the
Kafka key, the unit of ordering) and its event ``time`` in seconds. ``Event`` is the
discriminated union the decoder validates against; ``EVENT_TYPES`` maps each ``type`` value to
its class.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Final, Literal

from pydantic import (
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

from schemas.base import (
    DEFAULT_DOMAIN,
    IDENTIFIER_PATTERN,
    ContractModel,
    Domain,
    Finite,
    Index,
    Int64,
    ModelId,
    QueryId,
    Reward,
    Seconds,
    Share,
    Text,
    Usd,
    check_text,
)


def _metadata_value(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    # One readable error instead of one per union member.
    if isinstance(value, str):
        return check_text(value)
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "metadata_value_type", "Input should be a string, boolean, integer or finite number"
        ) from None


MetadataValue = Annotated[
    Text | Annotated[bool, Strict()] | Int64 | Finite,
    Field(union_mode="left_to_right"),
    WrapValidator(_metadata_value),
]
"""A metadata value: string (no NUL), boolean, integer or finite float."""


class EventBase(ContractModel):
    """Fields common to every input event."""

    schema_version: Literal[1] = 1
    """Wire format version; only 1 exists."""
    type: str
    """Event type discriminator."""
    domain: Domain = DEFAULT_DOMAIN
    """Routing domain (Kafka message key): one independent StageRoute instance."""
    time: Seconds
    """Event time in seconds (finite, >= 0)."""


class ModelArrived(EventBase):
    """A model becomes available as a deployment candidate."""

    type: Literal["model_arrived"] = "model_arrived"
    """Event type discriminator."""
    model_id: ModelId
    """Model identifier, unique among live models of the domain."""
    alpha: Share
    """Throughput share: at most this fraction of queries may go to the model, 1e-6 <= alpha <=
    1."""
    cost_min: Usd | None = None
    """Lower bound of the per-query cost in USD, if known."""
    cost_max: Usd | None = None
    """Upper bound of the per-query cost in USD, if known; >= cost_min when both are given."""
    price: Usd | None = None
    """Expected cost of one query in USD (the provider's list price times a typical query
    length), if published: the prior of the model's cost, within [cost_min, cost_max] when
    those are given. Without it the cost is learned from feedback."""
    metadata: dict[Text, MetadataValue] = Field(default_factory=dict)
    """Free-form descriptive attributes; not used for decisions."""

    @field_validator("cost_max")
    @classmethod
    def _cost_max_not_below_cost_min(
        cls, value: float | None, info: ValidationInfo
    ) -> float | None:
        cost_min = info.data.get("cost_min")
        if value is not None and cost_min is not None and value < cost_min:
            raise PydanticCustomError(
                "cost_range", "must be >= cost_min ({cost_min})", {"cost_min": cost_min}
            )
        return value

    @field_validator("price")
    @classmethod
    def _price_within_cost_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        low, high = info.data.get("cost_min"), info.data.get("cost_max")
        if value is not None and ((low is not None and value < low)
                                  or (high is not None and value > high)):
            raise PydanticCustomError(
                "price_range", "must be within [cost_min, cost_max] ({low}, {high})",
                {"low": low, "high": high})
        return value


class ModelExpired(EventBase):
    """A model leaves: it is never routed to again, from this event on."""

    type: Literal["model_expired"] = "model_expired"
    """Event type discriminator."""
    model_id: ModelId
    """Identifier of a live model."""


MAX_TAGS: Final = 16
"""Most tags a query may carry."""

MAX_VECTOR: Final = 64
"""Most elements of a query's feature vector."""

MAX_VECTOR_ABS: Final = 1e6
"""Largest magnitude of a feature-vector element."""

Tag = Annotated[str, Strict(), Field(min_length=1, max_length=64, pattern=IDENTIFIER_PATTERN)]
"""A categorical tag: 1-64 characters, no leading/trailing whitespace, no NUL."""

VectorElement = Annotated[
    float, Strict(), Field(ge=-MAX_VECTOR_ABS, le=MAX_VECTOR_ABS, allow_inf_nan=False)
]
"""A feature-vector element: finite, within [-1e6, 1e6]."""


class QueryFeatures(ContractModel):
    """Optional description of a query: what a gateway knows cheaply before routing it.

    The contextual policies route on a *context* derived from these fields (which ones is the
    policy's ``context`` parameter, stored with the run's config); the others ignore them.
    ``tags`` and ``vector`` are optional additions to schema version 1: every event without
    them is unchanged and valid, and a consumer that predates them rejects a query carrying
    them (``schema_mismatch``), so upgrade consumers before producers send them.
    """

    task: Text | None = None
    """Task or benchmark name, e.g. "mbpp"."""
    prompt_tokens: Index | None = None
    """Prompt length in tokens (>= 0)."""
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS)
    """Categorical tags, e.g. ["code", "python"] (at most 16; order and repeats ignored)."""
    vector: list[VectorElement] | None = Field(default=None, min_length=1,
                                               max_length=MAX_VECTOR)
    """A short numeric feature vector, e.g. a small classifier's class scores (1-64 finite
    numbers within [-1e6, 1e6])."""


class Query(EventBase):
    """A query to be routed to one deployed model."""

    type: Literal["query"] = "query"
    """Event type discriminator."""
    query_id: QueryId
    """Query identifier, unique within the domain."""
    features: QueryFeatures | None = None
    """Optional query description."""


class Feedback(EventBase):
    """The observed outcome of a routed query; may arrive late, out of order, or never."""

    type: Literal["feedback"] = "feedback"
    """Event type discriminator."""
    query_id: QueryId
    """The routed query."""
    model_id: ModelId
    """The model the query was routed to."""
    reward: Reward
    """Observed reward in [0, 1]."""
    cost: Usd
    """Observed cost in USD (finite, >= 0)."""


class StageBoundary(EventBase):
    """A maintenance window opens: the deployment set is re-decided for the new stage."""

    type: Literal["stage_boundary"] = "stage_boundary"
    """Event type discriminator."""
    stage: Index
    """Index of the stage that starts (>= 0)."""


Event = Annotated[
    ModelArrived | ModelExpired | Query | Feedback | StageBoundary,
    Field(discriminator="type"),
]
"""Any input event, discriminated by ``type``."""

EVENT_TYPES: Final[Mapping[str, type[EventBase]]] = MappingProxyType(
    {
        cls.model_fields["type"].default: cls
        for cls in (ModelArrived, ModelExpired, Query, Feedback, StageBoundary)
    }
)
"""Event ``type`` value -> event class."""

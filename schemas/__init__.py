"""The stageroute contract: input events, output decisions, dead letters, and their codec.

Pure: imports only the standard library and pydantic. Version 1 of the wire format; the JSON
Schema of every type is generated into ``schemas/json/`` by ``python -m streams.schema_files``.
"""

from schemas.base import trusted
from schemas.codec import EventRejected, dead_letter, decode_decision, decode_event, encode
from schemas.decisions import (
    DeadLetter,
    DeadLetterReason,
    Decision,
    DeploymentDecision,
    RoutingDecision,
)
from schemas.events import (
    Event,
    Feedback,
    ModelArrived,
    ModelExpired,
    Query,
    QueryFeatures,
    StageBoundary,
)

__all__ = [
    "DeadLetter",
    "DeadLetterReason",
    "Decision",
    "DeploymentDecision",
    "Event",
    "EventRejected",
    "Feedback",
    "ModelArrived",
    "ModelExpired",
    "Query",
    "QueryFeatures",
    "RoutingDecision",
    "StageBoundary",
    "dead_letter",
    "decode_decision",
    "decode_event",
    "encode",
    "trusted",
]

"""Wire codec: compact JSON bytes out; validated models in, or a rejection with a reason code.

Hot path: ``decode_event`` on bytes or str is a single ``TypeAdapter.validate_json`` call, which
parses and validates in one pass in pydantic-core. Only when that fails (the rare path) is the
raw input looked at again, to tell a malformed input or an unknown schema version from an
ordinary field error, and each pydantic error is mapped to a ``DeadLetterReason``:

1. invalid JSON, or JSON that is not an object          -> ``malformed``
2. ``schema_version`` present and not 1                  -> ``unknown_schema_version``
3. any missing, extra or wrongly typed field, unknown ``type`` -> ``schema_mismatch``
4. otherwise the first error: at ``reward`` -> ``reward_out_of_range``; at ``cost``,
   ``cost_min`` or ``cost_max`` -> ``invalid_cost``; anywhere else -> ``invalid_value``.

Floats survive ``encode`` -> decode bit for bit: pydantic-core writes the shortest decimal that
reads back to the same double.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from schemas.base import DEFAULT_DOMAIN, PATTERN_MESSAGES
from schemas.decisions import (
    MAX_PAYLOAD_BYTES,
    DeadLetter,
    DeadLetterReason,
    Decision,
    DecisionBase,
    clip_text,
)
from schemas.events import Event, EventBase

_EVENTS: Final[TypeAdapter[Event]] = TypeAdapter(Event)
_DECISIONS: Final[TypeAdapter[Decision]] = TypeAdapter(Decision)

_MAX_ERRORS_IN_DETAIL: Final = 5
_MAX_INPUT_REPR: Final = 80
_COST_FIELDS: Final = frozenset({("cost",), ("cost_min",), ("cost_max",)})
# Error types that mean "the shape is wrong" rather than "a value breaks a constraint";
# besides these, every `*_type` and `*_parsing` error is structural.
_STRUCTURAL_ERRORS: Final = frozenset(
    {
        "missing",
        "extra_forbidden",
        "literal_error",
        "enum",
        "union_tag_invalid",
        "union_tag_not_found",
        "int_from_float",
        "string_unicode",
        "is_instance_of",
    }
)
_NOT_AN_OBJECT: Final = frozenset({"dict_type", "model_attributes_type", "model_type"})
_ABSENT: Final = object()
# Depth-limited repr: inputs may be arbitrarily nested Python objects.
_REPR: Final = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _MAX_INPUT_REPR


class EventRejected(ValueError):
    """An input event failed validation; carries everything a dead letter needs.

    ``reason`` is the stable code, ``detail`` names the field and why, ``payload`` is the raw
    input text (cut to 64 KiB). Picklable: the constructor arguments are the exception args.
    """

    def __init__(self, reason: DeadLetterReason, detail: str, payload: str) -> None:
        super().__init__(reason, detail, payload)
        self.reason = reason
        self.detail = detail
        self.payload = payload

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


def encode(obj: EventBase | DecisionBase) -> bytes:
    """Serialise an event or decision as compact UTF-8 JSON, every field included."""
    return obj.__pydantic_serializer__.to_json(obj)


def decode_event(data: bytes | str | Mapping[str, Any]) -> Event:
    """Validate one input event from JSON text/bytes or an already-parsed mapping.

    Raises ``EventRejected`` with a reason code on any problem; never anything else.
    """
    try:
        if isinstance(data, bytes | str):
            return _EVENTS.validate_json(data)
        if isinstance(data, dict):
            return _EVENTS.validate_python(data)
        if isinstance(data, Mapping):
            return _EVENTS.validate_python(dict(data))
    except ValidationError as exc:
        raise _rejection(data, exc.errors(include_url=False)) from None
    raise EventRejected(
        DeadLetterReason.MALFORMED,
        f"expected bytes, str or a mapping, got {type(data).__name__}",
        _payload_text(data),
    )


def decode_decision(data: bytes | str | Mapping[str, Any]) -> Decision:
    """Validate one decision or dead letter; raises ``pydantic.ValidationError`` (a
    ``ValueError``) when invalid."""
    if isinstance(data, bytes | str):
        return _DECISIONS.validate_json(data)
    if isinstance(data, Mapping) and not isinstance(data, dict):
        data = dict(data)
    return _DECISIONS.validate_python(data)


def dead_letter(
    rejected: EventRejected, domain: str = DEFAULT_DOMAIN, seq: int | None = None
) -> DeadLetter:
    """The dead-letter record of a rejected event (``domain`` must itself be valid)."""
    return DeadLetter(
        domain=domain,
        seq=seq,
        reason=rejected.reason,
        detail=rejected.detail,
        payload=rejected.payload,
    )


def _rejection(data: object, errors: list[ErrorDetails]) -> EventRejected:
    payload = _payload_text(data)
    first = errors[0]
    if first["type"] == "json_invalid":
        return EventRejected(DeadLetterReason.MALFORMED, first["msg"], payload)
    if not first["loc"] and first["type"] in _NOT_AN_OBJECT:
        kind = type(first["input"]).__name__
        return EventRejected(
            DeadLetterReason.MALFORMED, f"expected a JSON object, got {kind}", payload
        )
    version = _schema_version(data)
    if version is not _ABSENT and version != 1:
        return EventRejected(
            DeadLetterReason.UNKNOWN_SCHEMA_VERSION,
            f"schema_version: unsupported version {_short_repr(version)} (supported: 1)",
            payload,
        )
    reasons = [_reason(error) for error in errors]
    if DeadLetterReason.SCHEMA_MISMATCH in reasons:
        reason = DeadLetterReason.SCHEMA_MISMATCH
    else:
        reason = reasons[0]
    return EventRejected(reason, _detail(errors), payload)


def _reason(error: ErrorDetails) -> DeadLetterReason:
    kind = error["type"]
    if kind in _STRUCTURAL_ERRORS or kind.endswith(("_type", "_parsing")):
        return DeadLetterReason.SCHEMA_MISMATCH
    path = error["loc"][1:]  # loc[0] is the union tag, e.g. "feedback"
    if path == ("reward",):
        return DeadLetterReason.REWARD_OUT_OF_RANGE
    if path in _COST_FIELDS:
        return DeadLetterReason.INVALID_COST
    return DeadLetterReason.INVALID_VALUE


def _detail(errors: list[ErrorDetails]) -> str:
    parts = [_describe(error) for error in errors[:_MAX_ERRORS_IN_DETAIL]]
    if len(errors) > _MAX_ERRORS_IN_DETAIL:
        parts.append(f"and {len(errors) - _MAX_ERRORS_IN_DETAIL} more error(s)")
    return "; ".join(parts)


def _describe(error: ErrorDetails) -> str:
    """``"<field path>: <why> (got <input>)"``, e.g. ``"reward: Input should be ... (got 1.5)"``."""
    kind, loc = error["type"], error["loc"]
    if kind == "union_tag_not_found":
        return "type: Field required"
    if kind == "union_tag_invalid":
        return f"type: {error['msg']}"
    path = ".".join(str(part) for part in loc[1:]) or ".".join(str(part) for part in loc)
    if kind == "missing":
        return f"{path}: {error['msg']}"
    message = error["msg"]
    if kind == "string_pattern_mismatch":
        message = PATTERN_MESSAGES.get(str(error.get("ctx", {}).get("pattern")), message)
    return f"{path}: {message} (got {_short_repr(error['input'])})"


def _schema_version(data: object) -> object:
    """The raw ``schema_version`` of the input, or ``_ABSENT``; only called on the error path."""
    obj: object = data
    if isinstance(data, bytes | str):
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return _ABSENT
    if isinstance(obj, Mapping):
        return obj.get("schema_version", _ABSENT)
    return _ABSENT


def _payload_text(data: object) -> str:
    if isinstance(data, bytes):
        text = data.decode("utf-8", "backslashreplace")
    elif isinstance(data, str):
        text = data
    else:
        try:
            text = json.dumps(data, ensure_ascii=False, default=repr)
        except (TypeError, ValueError, RecursionError):
            text = _REPR.repr(data)
    return clip_text(text, MAX_PAYLOAD_BYTES)


def _short_repr(value: object) -> str:
    text = _REPR.repr(value)
    if len(text) > _MAX_INPUT_REPR:
        return text[: _MAX_INPUT_REPR - 3] + "..."
    return text

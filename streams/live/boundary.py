"""The boundary of the live worker: a consumed record becomes an event, or the dead letter it
is (undecodable, or its message key is not the event's ``domain``: the key decides the
partition, so a mismatched event could land with another domain's owner)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas import DeadLetter, DeadLetterReason, Event, EventRejected, decode_event, encode
from schemas.base import DEFAULT_DOMAIN


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed input record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def decode(msg: Message) -> tuple[Event | None, DeadLetter | None]:
    """The record's event, or the dead letter it becomes at the boundary."""
    try:
        event = decode_event(msg.value if msg.value is not None else b"")
    except EventRejected as rejected:
        return None, letter(msg, rejected.reason, rejected.detail, rejected.payload)
    key = _key_text(msg.key)
    if key != event.domain:
        return None, letter(msg, DeadLetterReason.KEY_MISMATCH,
                             f"message key {key!r} is not the event's domain "
                             f"{event.domain!r}", encode(event).decode())
    return event, None


def letter(msg: Message, reason: DeadLetterReason, detail: str, payload: str) -> DeadLetter:
    return DeadLetter(domain=_key_domain(msg.key), reason=reason, detail=detail,
                      payload=payload)


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return repr(key)


def _key_domain(key: bytes | None) -> str:
    """The domain a record's dead letter is published under: its key if that is a valid
    domain, else the default domain."""
    text = _key_text(key)
    if not text:
        return DEFAULT_DOMAIN
    try:
        DeadLetter(domain=text, reason=DeadLetterReason.MALFORMED, detail="", payload="")
    except ValidationError:
        return DEFAULT_DOMAIN
    return text

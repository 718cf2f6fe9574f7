"""Contract tests for schemas/: event and decision models, the codec, and the JSON Schema files."""

from __future__ import annotations

import json
import math
import pickle
import struct
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import (
    DeadLetter,
    DeadLetterReason,
    DeploymentDecision,
    EventRejected,
    Feedback,
    ModelArrived,
    ModelExpired,
    Query,
    QueryFeatures,
    RoutingDecision,
    StageBoundary,
    dead_letter,
    decode_decision,
    decode_event,
    encode,
)
from schemas.base import MAX_SECONDS, MAX_USD
from schemas.decisions import DECISION_TYPES, MAX_PAYLOAD_BYTES
from schemas.events import EVENT_TYPES
from streams.schema_files import check, render

R = DeadLetterReason

# --- factories: valid wire dicts, overridable per test -------------------------------------------


def model_arrived(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "model_arrived",
        "time": 0.0,
        "model_id": "gpt-4",
        "alpha": 0.5,
        "cost_min": 0.001,
        "cost_max": 0.01,
        "metadata": {"provider": "openai", "ctx": 8192, "ratio": 1.5, "chat": True},
        **overrides,
    }


def model_expired(**overrides: Any) -> dict[str, Any]:
    return {"type": "model_expired", "time": 5.0, "model_id": "gpt-4", **overrides}


def query(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "query",
        "domain": "eu-west",
        "time": 1.25,
        "query_id": "q-1",
        "features": {"task": "mbpp", "prompt_tokens": 412},
        **overrides,
    }


def feedback(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "feedback",
        "time": 2.5,
        "query_id": "q-1",
        "model_id": "gpt-4",
        "reward": 0.75,
        "cost": 0.002,
        **overrides,
    }


def stage_boundary(**overrides: Any) -> dict[str, Any]:
    return {"type": "stage_boundary", "time": 10.0, "stage": 1, **overrides}


def routing_decision(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "routing_decision",
        "domain": "default",
        "query_id": "q-1",
        "seq": 7,
        "stage": 0,
        "time": 1.25,
        "policy": "stageroute",
        "model_id": "b",
        "deployed": ["a", "b"],
        "mu_u": [1.0, 0.8],
        "c_l": [0.001, 0.0005],
        "alpha": [0.6, 0.6],
        "budget": 0.001,
        "p": [0.4, 0.6],
        "draw": 0.5,
        "status": "optimal",
        **overrides,
    }


def deployment_decision(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "deployment_decision",
        "domain": "default",
        "seq": 3,
        "stage": 1,
        "time": 10.0,
        "policy": "stageroute",
        "reason": "stage_boundary",
        "candidates": ["a", "b", "c"],
        "mu_u": [1.0, 0.8, 0.5],
        "c_l": [0.001, 0.0005, 0.0001],
        "alpha": [0.6, 0.6, 1.0],
        "budget": 0.001,
        "m_max": 2,
        "selected": ["a", "b"],
        "d": [0.4, 0.6, 0.0],
        "objective": 0.88,
        "status": "optimal",
        **overrides,
    }


def wire(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def rejection(data: Any) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        decode_event(data)
    return info.value


# --- events: one valid roundtrip per type --------------------------------------------------------

EVENT_FACTORIES = [model_arrived, model_expired, query, feedback, stage_boundary]


def test_every_event_type_has_a_factory() -> None:
    assert {factory()["type"] for factory in EVENT_FACTORIES} == set(EVENT_TYPES)


@pytest.mark.parametrize("factory", EVENT_FACTORIES, ids=lambda f: f.__name__)
def test_event_roundtrip(factory: Any) -> None:
    event = decode_event(wire(factory()))
    assert type(event) is EVENT_TYPES[factory()["type"]]
    assert event.schema_version == 1
    assert decode_event(encode(event)) == event
    assert decode_event(encode(event).decode()) == event
    assert decode_event(json.loads(encode(event))) == event
    assert decode_event(MappingProxyType(factory())) == event


def test_defaults_fill_in_for_minimal_events() -> None:
    event = decode_event(b'{"type":"query","time":3,"query_id":"q"}')
    assert event == Query(time=3.0, query_id="q")
    assert (event.domain, event.features, event.time) == ("default", None, 3.0)
    arrived = decode_event(b'{"type":"model_arrived","time":0,"model_id":"m","alpha":1}')
    assert isinstance(arrived, ModelArrived)
    assert (arrived.cost_min, arrived.cost_max, arrived.metadata) == (None, None, {})


def test_python_construction_matches_wire() -> None:
    built = [
        ModelArrived(time=0.0, model_id="gpt-4", alpha=0.5, cost_min=0.001, cost_max=0.01),
        ModelExpired(time=5.0, model_id="gpt-4"),
        Query(time=1.25, query_id="q-1", features=QueryFeatures(task="mbpp")),
        Feedback(time=2.5, query_id="q-1", model_id="gpt-4", reward=0.75, cost=0.002),
        StageBoundary(time=10.0, stage=1),
    ]
    for event in built:
        assert decode_event(encode(event)) == event


def test_events_are_frozen() -> None:
    event = Feedback(time=2.5, query_id="q-1", model_id="gpt-4", reward=0.75, cost=0.002)
    with pytest.raises(ValidationError):
        event.reward = 0.1


def test_encode_is_compact_and_complete() -> None:
    data = encode(StageBoundary(time=10.0, stage=1))
    assert data == (
        b'{"schema_version":1,"type":"stage_boundary","domain":"default","time":10.0,"stage":1}'
    )


# --- codec reason codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"{", b"\xff\xfe", b"", "not json", b"[1, 2]", b'"feedback"', b"42", b"null", 42, [1]],
)
def test_malformed(data: Any) -> None:
    assert rejection(data).reason is R.MALFORMED


@pytest.mark.parametrize(
    "data",
    [
        feedback(cost=None),
        {k: v for k, v in feedback().items() if k != "cost"},
        feedback(extra=1),
        feedback(reward="0.5"),
        feedback(reward=True),
        stage_boundary(stage=2.0),
        stage_boundary(stage="2"),
        query(features={"task": "mbpp", "language": "en"}),
        query(query_id=17),
        model_arrived(metadata={"nested": {"a": 1}}),
        feedback(type="feedbacks"),
        {k: v for k, v in feedback().items() if k != "type"},
        # a structural error wins over a constraint error elsewhere in the event
        feedback(reward=1.5, extra=1),
    ],
)
def test_schema_mismatch(data: dict[str, Any]) -> None:
    assert rejection(wire(data)).reason is R.SCHEMA_MISMATCH


@pytest.mark.parametrize("version", [2, 0, "1", None, 1.5])
def test_unknown_schema_version_is_checked_first(version: Any) -> None:
    # Otherwise broken in several ways: only the version may be reported.
    data = feedback(schema_version=version, reward="x", future_field=1, type="feedback_v2")
    rejected = rejection(wire(data))
    assert rejected.reason is R.UNKNOWN_SCHEMA_VERSION
    assert rejected.detail.startswith("schema_version:")


@pytest.mark.parametrize("reward", [1.5, -0.1, 1.0000000000000002, "NaN", "Infinity", "-Infinity"])
def test_reward_out_of_range(reward: Any) -> None:
    data = wire(feedback(reward=0.5)).replace(b'"reward": 0.5', f'"reward": {reward}'.encode())
    assert rejection(data).reason is R.REWARD_OUT_OF_RANGE


def test_reward_detail_names_field_and_value() -> None:
    rejected = rejection(wire(feedback(reward=1.5)))
    assert rejected.detail == "reward: Input should be less than or equal to 1 (got 1.5)"
    assert str(rejected) == f"reward_out_of_range: {rejected.detail}"


@pytest.mark.parametrize(
    "data",
    [
        wire(feedback(cost=-0.01)),
        b'{"type":"feedback","time":1,"query_id":"q","model_id":"m","reward":0.5,"cost":NaN}',
        b'{"type":"feedback","time":1,"query_id":"q","model_id":"m","reward":0.5,"cost":Infinity}',
        b'{"type":"feedback","time":1,"query_id":"q","model_id":"m","reward":0.5,"cost":1e999}',
        feedback(cost=float("nan")),
        feedback(cost=float("inf")),
        wire(model_arrived(cost_min=-1.0)),
        b'{"type":"model_arrived","time":0,"model_id":"m","alpha":1,"cost_max":NaN}',
        wire(model_arrived(cost_min=0.02, cost_max=0.01)),
    ],
)
def test_invalid_cost(data: Any) -> None:
    assert rejection(data).reason is R.INVALID_COST


@pytest.mark.parametrize(
    "data",
    [
        model_arrived(alpha=0),
        model_arrived(alpha=1.5),
        model_arrived(alpha=-0.5),
        feedback(time=-1),
        stage_boundary(stage=-1),
        query(features={"prompt_tokens": -1}),
        query(query_id=""),
        query(query_id=" q-1"),
        query(query_id="q-1\n"),
        query(query_id="q\x00"),
        query(query_id="q" * 257),
        query(domain=""),
        query(domain="d" * 129),
        model_expired(model_id="\u2003"),
        query(features={"task": "a\x00b"}),
    ],
)
def test_invalid_value(data: dict[str, Any]) -> None:
    assert rejection(wire(data)).reason is R.INVALID_VALUE


def test_nan_time_is_rejected_even_from_python() -> None:
    assert rejection(feedback(time=float("nan"))).reason is R.INVALID_VALUE
    with pytest.raises(ValidationError):
        Feedback(time=math.inf, query_id="q", model_id="m", reward=0.5, cost=0.0)


def test_identifier_limits_are_inclusive() -> None:
    event = decode_event(wire(query(query_id="q" * 256, domain="d" * 128)))
    assert isinstance(event, Query)
    assert decode_event(wire(query(query_id="a b"))).query_id == "a b"  # type: ignore[union-attr]


def test_detail_lists_several_errors_by_path() -> None:
    rejected = rejection(wire(query(query_id=" q", features={"prompt_tokens": -1})))
    assert rejected.detail.startswith("query_id: must not have leading or trailing whitespace")
    assert "; features.prompt_tokens: Input should be greater than or equal to 0 (got -1)" in (
        rejected.detail
    )


def test_payload_is_the_raw_text_truncated_to_64_kib() -> None:
    raw = wire(feedback(reward=2.0))
    assert rejection(raw).payload == raw.decode()
    huge = wire(feedback(reward=2.0, query_id="é" * 100_000))
    payload = rejection(huge).payload
    assert len(payload.encode()) <= MAX_PAYLOAD_BYTES
    assert huge.decode().startswith(payload)
    assert rejection(b'{"a":\xff\x00}').payload == '{"a":\\xff\\x00}'


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_decode_event_raises_only_event_rejected(data: bytes | str) -> None:
    try:
        decode_event(data)
    except EventRejected as rejected:
        assert rejected.reason in set(R)
        dead_letter(rejected)  # always storable


def test_deeply_nested_input_is_rejected_not_crashed() -> None:
    assert rejection(b"[" * 100_000).reason is R.MALFORMED
    deep: dict[str, Any] = {}
    for _ in range(5_000):
        deep = {"a": deep}
    assert rejection(query(features=deep)).reason is R.SCHEMA_MISMATCH


def test_dead_letter_helper_and_pickling() -> None:
    rejected = rejection(wire(feedback(reward=1.5)))
    again = pickle.loads(pickle.dumps(rejected))
    assert (again.reason, again.detail, again.payload) == (
        rejected.reason,
        rejected.detail,
        rejected.payload,
    )
    letter = dead_letter(rejected, domain="eu-west", seq=12)
    assert (letter.domain, letter.seq, letter.reason) == ("eu-west", 12, R.REWARD_OUT_OF_RANGE)
    assert decode_decision(encode(letter)) == letter
    assert json.loads(encode(letter))["reason"] == "reward_out_of_range"


# --- floats roundtrip bit-exactly ----------------------------------------------------------------


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


@given(st.floats(min_value=0.0, allow_nan=False, allow_infinity=False))
@example(0.1 + 0.2)
@example(1e-300)
@example(5e-324)  # smallest subnormal
@example(2.225073858507201e-308)  # largest subnormal
@example(1.7976931348623157e308)
@example(-0.0)
@example(1e16)
def test_float_roundtrip_is_bit_exact(x: float) -> None:
    # Times and costs are bounded (MAX_SECONDS, MAX_USD); larger values travel in metadata.
    t, c = min(x, MAX_SECONDS), min(x, MAX_USD)
    event = Feedback(time=t, query_id="q", model_id="m", reward=min(x, 1.0), cost=c)
    decoded = decode_event(encode(event))
    assert isinstance(decoded, Feedback)
    assert bits(decoded.time) == bits(t)
    assert bits(decoded.cost) == bits(c)
    assert bits(decoded.reward) == bits(min(x, 1.0))
    arrival = ModelArrived(model_id="m", alpha=1.0, time=0.0, metadata={"x": x})
    decoded_arrival = decode_event(encode(arrival))
    assert isinstance(decoded_arrival, ModelArrived)
    assert bits(decoded_arrival.metadata["x"]) == bits(x)  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, allow_infinity=False))
@example(-(0.1 + 0.2))
@example(-5e-324)
def test_signed_float_roundtrip_in_decisions(x: float) -> None:
    decision = DeploymentDecision.model_validate(deployment_decision(objective=x))
    decoded = decode_decision(encode(decision))
    assert isinstance(decoded, DeploymentDecision)
    assert bits(decoded.objective) == bits(x)


# --- decisions -----------------------------------------------------------------------------------

DECISION_FACTORIES = [routing_decision, deployment_decision]


def test_every_decision_type_is_covered() -> None:
    covered = {factory()["type"] for factory in DECISION_FACTORIES} | {"dead_letter"}
    assert covered == set(DECISION_TYPES)


@pytest.mark.parametrize("factory", DECISION_FACTORIES, ids=lambda f: f.__name__)
def test_decision_roundtrip(factory: Any) -> None:
    decision = decode_decision(wire(factory()))
    assert type(decision) is DECISION_TYPES[factory()["type"]]
    assert decode_decision(encode(decision)) == decision
    assert decode_decision(MappingProxyType(json.loads(encode(decision)))) == decision


@pytest.mark.parametrize(
    "overrides",
    [
        {"p": [1.0]},
        {"mu_u": [1.0, 0.8, 0.1]},
        {"c_l": []},
        {"alpha": [0.6]},
        {"deployed": [], "mu_u": [], "c_l": [], "alpha": [], "p": []},
        {"model_id": "z"},
        {"deployed": ["b", "b"]},
        {"draw": 1.0},
        {"p": [-0.1, 1.1]},
        {"domain": ""},
    ],
)
def test_routing_decision_rejects_inconsistent_lists(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RoutingDecision.model_validate(routing_decision(**overrides))
    with pytest.raises(ValueError):
        decode_decision(wire(routing_decision(**overrides)))


def test_routing_decision_single_model() -> None:
    decision = RoutingDecision.model_validate(
        routing_decision(
            model_id="a", deployed=["a"], mu_u=[1.0], c_l=[0.0], alpha=[1.0], p=[1.0], cached=True
        )
    )
    assert decision.cached and decision.deployed == ["a"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"selected": ["a", "z"]},
        {"selected": ["a", "a"]},
        {"selected": ["a", "b", "c"]},
        {"d": [0.4, 0.6]},
        {"m_max": 0},
        {"reason": "whim"},
        {"candidates": ["a", "a", "c"]},
    ],
)
def test_deployment_decision_rejects_inconsistent_sets(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DeploymentDecision.model_validate(deployment_decision(**overrides))


def test_deployment_decision_without_candidates() -> None:
    empty: dict[str, list[Any]] = {
        name: [] for name in ("candidates", "mu_u", "c_l", "alpha", "d", "selected")
    }
    decision = DeploymentDecision.model_validate(
        deployment_decision(reason="deployed_set_empty", objective=0.0, status="empty", **empty)
    )
    assert decision.selected == []


def test_dead_letter_clips_payload_and_escapes_nul() -> None:
    letter = DeadLetter(
        domain="default", reason=R.MALFORMED, detail="x", payload="a\x00" + "b" * 70_000
    )
    assert letter.payload.startswith("a\\x00b")
    assert len(letter.payload.encode()) == MAX_PAYLOAD_BYTES


# --- JSON Schema files ---------------------------------------------------------------------------


def test_json_schema_files_match_models() -> None:
    assert check() == [], "schemas/json is stale: run `python -m streams.schema_files`"


def test_check_reports_missing_changed_and_stale_files(tmp_path: Any) -> None:
    for name, content in render().items():
        (tmp_path / name).write_text(content)
    assert check(tmp_path) == []
    (tmp_path / "query.v1.json").write_text("{}\n")
    (tmp_path / "feedback.v1.json").unlink()
    (tmp_path / "old.v0.json").write_text("{}\n")
    assert check(tmp_path) == ["feedback.v1.json", "old.v0.json", "query.v1.json"]


def test_exported_schema_requires_the_discriminator() -> None:
    files = {name: json.loads(content) for name, content in render().items()}
    assert set(files) == {f"{kind}.v1.json" for kind in (*EVENT_TYPES, *DECISION_TYPES)}
    for schema in files.values():
        assert schema["required"][0] == "type"
        assert schema["additionalProperties"] is False

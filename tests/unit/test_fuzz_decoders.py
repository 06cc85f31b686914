"""Fuzzing the event decoders: mutations of real encoded events and random bytes give an event or
``DecodeError``, never another exception (a consumer dead-letters DecodeError and goes on)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radstream.bench.fuzz import Mutation, bytes_mutations, decode_once, mutate_bytes, sample_events
from radstream.devenv.process import free_port
from radstream.events.serde import SingleObjectCodec
from radstream.kafka.schema_topic import KafkaSchemaLookup
from radstream.settings import Settings

pytestmark = [pytest.mark.unit]

# the decoder itself, with the schema history it ships (an unknown writer fingerprint is then an
# UnknownSchemaError); the Kafka schema-topic lookup is tested on its own below
CODEC = SingleObjectCodec()
ENCODED = [CODEC.encode(e) for e in sample_events()]
FUZZ = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def test_the_seeds_decode() -> None:
    assert [decode_once(CODEC, b) for b in ENCODED] == ["ok"] * len(ENCODED)


@FUZZ
@given(st.sampled_from(range(len(ENCODED))), bytes_mutations(), st.integers(0, 2**32 - 1))
def test_mutated_events_decode_or_raise_decode_error(i: int, muts: list, rng_seed: int) -> None:  # type: ignore[type-arg]
    assert decode_once(CODEC, mutate_bytes(ENCODED[i], muts, rng_seed)) in ("ok", "DecodeError")


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    assert decode_once(CODEC, data) in ("ok", "DecodeError")


@FUZZ
@given(st.sampled_from(range(len(ENCODED))), st.binary(max_size=400))
def test_a_valid_header_with_a_random_body(i: int, body: bytes) -> None:
    assert decode_once(CODEC, ENCODED[i][:10] + body) in ("ok", "DecodeError")


def test_regression_crc_flip_in_the_fingerprint() -> None:
    """Found by the fuzzer: a bit flip in the fingerprint names no known schema: DecodeError."""
    data = mutate_bytes(ENCODED[0], [Mutation("flip", 0.01, 3, 1)])
    assert data[2:10] != ENCODED[0][2:10]
    assert decode_once(CODEC, data) == "DecodeError"


def test_regression_unknown_fingerprint_with_the_broker_unreachable() -> None:
    """Found by the fuzzer: with the schema-topic lookup (the default codec) an unknown fingerprint
    while the broker was unreachable raised KafkaException; now a DecodeError, and misses are
    rate-limited (a second corrupt message does not wait for the broker again)."""
    s = Settings.model_validate({"site_secret": "fuzz", "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"}})
    codec = SingleObjectCodec(lookup=KafkaSchemaLookup(s))
    data = mutate_bytes(ENCODED[0], [Mutation("flip", 0.01, 3, 1)])
    assert decode_once(codec, data) == "DecodeError"
    started = time.monotonic()
    assert decode_once(codec, data) == "DecodeError"  # the same unknown fingerprint: no second wait
    assert time.monotonic() - started < 1.0

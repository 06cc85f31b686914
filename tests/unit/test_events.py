"""Schemas, typed classes and the wire formats."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import types
import typing

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from radstream.events.models import EVENT_TYPES, RECORD_TYPES, Record
from radstream.events.schemas import crc64_avro, current_schemas, historical_schemas, schemas_dir
from radstream.events.serde import MAGIC, DecodeError, SingleObjectCodec, UnknownSchemaError
from tests.avro_samples import all_sample_events, sample_datum, sample_event

pytestmark = pytest.mark.unit


def _is_optional(tp: typing.Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.SCHEMA_NAME)
def test_class_mirrors_schema(cls: type[Record]) -> None:
    """The .avsc is the source of truth: same fields, same order, same optionality and defaults."""
    schema = current_schemas()[cls.SCHEMA_NAME].schema
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    assert list(fields) == [f["name"] for f in schema["fields"]]
    for f in schema["fields"]:
        nullable = isinstance(f["type"], list) and "null" in f["type"]
        assert _is_optional(hints[f["name"]]) == nullable, f["name"]
        if nullable:
            assert fields[f["name"]].default is None, f"{f['name']}: nullable fields default to None"
        assert f.get("doc"), f"{cls.SCHEMA_NAME}.{f['name']} has no doc"


def test_every_schema_file_is_one_named_type_in_the_namespace() -> None:
    for path in schemas_dir().glob("*.avsc"):
        data = json.loads(path.read_text())
        assert data["namespace"] == "org.radstream.events"
        assert data["name"] == path.stem
        assert data.get("doc")


def test_crc64_avro_matches_fastavro_and_the_spec() -> None:
    for sv in current_schemas().values():
        assert sv.fingerprint.hex() == fastavro_fingerprint(to_parsing_canonical_form(sv.schema), "CRC-64-AVRO")
    # Avro specification: the fingerprint of the empty input is the EMPTY constant
    assert crc64_avro(b"") == 0xC15D213AA4D7A795


@pytest.mark.parametrize("event", all_sample_events(), ids=lambda e: e.SCHEMA_NAME)
def test_single_object_roundtrip(event: typing.Any) -> None:
    codec = SingleObjectCodec()
    data = codec.encode(event)
    assert data[:2] == MAGIC
    assert data[2:10] == current_schemas()[event.SCHEMA_NAME].fingerprint
    assert codec.decode(data) == event


def test_bodies_are_plain_avro() -> None:
    """Anyone with the schema can read our bytes with a bare Avro library."""
    event = sample_event(EVENT_TYPES[0])
    data = SingleObjectCodec().encode(event)
    parsed = current_schemas()[event.SCHEMA_NAME].parsed
    assert fastavro.schemaless_reader(io.BytesIO(data[10:]), parsed) == event.to_avro()


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00", b"hello world, not avro", MAGIC + b"\x00" * 8 + b"abc", b"\xc3\x01\x01\x02"],
)
def test_garbage_is_a_decode_error(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        SingleObjectCodec().decode(bad)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.SCHEMA_NAME)
def test_truncated_and_trailing_bytes_are_decode_errors(cls: type[Record]) -> None:
    codec = SingleObjectCodec()
    data = codec.encode(sample_event(cls))  # type: ignore[arg-type]
    for cut in range(1, len(data) - 10):
        with pytest.raises(DecodeError):
            codec.decode(data[:-cut])
    for tail in (b"\x00", b"\x00\x00", b"\x02abc", bytes(range(16))):
        with pytest.raises(DecodeError, match="trailing bytes after the end"):
            codec.decode(data + tail)


@pytest.mark.parametrize("seed", range(25))
def test_the_fast_decoder_reads_what_fastavro_reads(seed: int) -> None:
    """Bodies in the reader's own schema are decoded by cavro, the rest by fastavro: both give
    the same values (times as UTC datetimes, bytes, enums, maps, nulls) for every event type."""
    codec = SingleObjectCodec()
    for event in all_sample_events(seed):
        data = codec.encode(event)
        parsed = current_schemas()[event.SCHEMA_NAME].parsed
        expected = fastavro.schemaless_reader(io.BytesIO(data[10:]), parsed)
        decoded = codec.decode(data)
        assert decoded.to_avro() == expected
        assert decoded == event


def _newer(schema: dict[str, typing.Any]) -> dict[str, typing.Any]:
    """A future version: one more optional field, as a backward-compatible change would add."""
    new = json.loads(json.dumps(schema))
    new["fields"].append({"name": "added_later", "type": ["null", "string"], "default": None, "doc": "x"})
    return new


def test_old_reader_reads_newer_writer_through_lookup() -> None:
    cls = EVENT_TYPES[0]
    current = current_schemas()[cls.SCHEMA_NAME].schema
    newer = _newer(current)
    from radstream.events.schemas import fingerprint

    fp = fingerprint(newer)
    datum = sample_datum(newer, random.Random(3))
    datum["added_later"] = "something new"
    buf = io.BytesIO()
    buf.write(MAGIC + fp)
    fastavro.schemaless_writer(buf, fastavro.parse_schema(newer), datum)

    with pytest.raises(UnknownSchemaError):
        SingleObjectCodec().decode(buf.getvalue())
    codec = SingleObjectCodec(lookup=lambda f: newer if f == fp else None)
    event = codec.decode(buf.getvalue())
    assert type(event) is cls
    assert event.event_id == datum["event_id"]


@pytest.mark.parametrize("old", historical_schemas(), ids=lambda sv: f"{sv.name}.{sv.version}")
def test_current_schema_is_compatible_with_every_published_version(old: typing.Any) -> None:
    """Backward (new reads old) and forward (old reads new) compatibility by Avro schema resolution."""
    current = current_schemas()[old.name]
    rng = random.Random(11)
    for writer, reader in ((old, current), (current, old)):
        for _ in range(20):
            datum = sample_datum(writer.schema, rng)
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer.parsed, datum)
            buf.seek(0)
            fastavro.schemaless_reader(buf, writer.parsed, reader.parsed)
    # and the codec resolves the old fingerprint itself
    codec = SingleObjectCodec()
    buf = io.BytesIO()
    buf.write(MAGIC + old.fingerprint)
    fastavro.schemaless_writer(buf, old.parsed, sample_datum(old.schema, rng))
    assert old.name == codec.decode(buf.getvalue()).SCHEMA_NAME


def test_every_event_has_a_published_version() -> None:
    published = {sv.name for sv in historical_schemas()}
    assert {cls.SCHEMA_NAME for cls in EVENT_TYPES} <= published

"""Valid sample data for any Avro schema (used to exercise every event type and schema version)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from radstream.events.models import EVENT_TYPES, Event
from radstream.events.schemas import current_schemas


def sample_datum(schema: Any, rng: random.Random, named: dict[str, Any] | None = None) -> Any:
    named = {} if named is None else named
    if isinstance(schema, str):
        simple = {
            "null": None,
            "boolean": rng.random() < 0.5,
            "int": rng.randint(-1000, 1000),
            "long": rng.randint(0, 2**40),
            "float": rng.random(),
            "double": rng.uniform(-500, 500),
            "bytes": bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 16))),
            "string": "1.2.826.0.1." + str(rng.randint(1, 10**9)),
        }
        if schema in simple:
            return simple[schema]
        return sample_datum(named[schema], rng, named)
    if isinstance(schema, list):
        non_null = [s for s in schema if s != "null"]
        return sample_datum(rng.choice(non_null), rng, named)
    t = schema["type"]
    if isinstance(t, (dict, list)):
        return sample_datum(t, rng, named)
    if t == "record":
        named[schema["name"]] = schema
        named[f"{schema.get('namespace', '')}.{schema['name']}"] = schema
        return {f["name"]: sample_datum(f["type"], rng, named) for f in schema["fields"]}
    if t == "enum":
        named[schema["name"]] = schema
        named[f"{schema.get('namespace', '')}.{schema['name']}"] = schema
        return rng.choice(schema["symbols"])
    if t == "array":
        return [sample_datum(schema["items"], rng, named) for _ in range(rng.randint(1, 3))]
    if t == "map":
        return {f"k{i}": sample_datum(schema["values"], rng, named) for i in range(rng.randint(1, 3))}
    if t == "long" and schema.get("logicalType") == "timestamp-millis":
        return datetime.fromtimestamp(rng.randint(1_600_000_000_000, 1_900_000_000_000) / 1000, UTC)
    return sample_datum(t, rng, named)


def sample_event(cls: type[Event], seed: int = 0) -> Event:
    data = sample_datum(current_schemas()[cls.SCHEMA_NAME].schema, random.Random(seed))
    return cls.from_avro(data)


def all_sample_events(seed: int = 0) -> list[Event]:
    return [sample_event(cls, seed + i) for i, cls in enumerate(EVENT_TYPES)]

"""Choose the wire format from the settings."""

from __future__ import annotations

from radstream.events.serde import Codec, ConfluentCodec, SingleObjectCodec
from radstream.settings import Settings


def codec_for(settings: Settings) -> Codec:
    """Confluent wire format when a registry URL is set, else Avro single-object encoding."""
    if settings.kafka.schema_registry_url:
        return ConfluentCodec(settings.kafka.schema_registry_url)
    from radstream.kafka.schema_topic import KafkaSchemaLookup

    return SingleObjectCodec(lookup=KafkaSchemaLookup(settings))

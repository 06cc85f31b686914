"""Scaling per pipeline: more partitions on its requests topic, so more workers of its group share it."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import NewPartitions

from radstream.kafka.topics import admin
from radstream.settings import Settings


class ScaleError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ScaleResult:
    topic: str
    before: int
    after: int


def scale_pipeline(settings: Settings, pipeline: str, partitions: int, timeout: float = 30.0) -> ScaleResult:
    """Raise the partition count of ``radstream.requests.<pipeline>`` (Kafka never lowers it).

    New partitions take new keys only: a patient's earlier requests stay where they were, so
    ordering per patient holds for new events; in-flight ones finish on their old partition.
    """
    if pipeline not in settings.pipeline_names():
        raise ScaleError(f"unknown pipeline {pipeline!r}; known: {', '.join(settings.pipeline_names())}")
    topic = settings.topic(f"requests.{pipeline}")
    client = admin(settings)
    md = client.list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise ScaleError(f"topic {topic} does not exist (run `radstream topics create`)")
    before = len(t.partitions)
    if partitions < before:
        raise ScaleError(f"{topic} has {before} partitions; Kafka cannot remove partitions")
    if partitions > before:
        # the client must outlive the future (radstream.kafka.topics.add_partitions drops it too early)
        client.create_partitions([NewPartitions(topic, partitions)], operation_timeout=timeout)[topic].result()
    return ScaleResult(topic, before, partitions)

"""Every topic of the architecture, created idempotently with sensible settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

from radstream.kafka.config import base_config
from radstream.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


def durability_config(settings: Settings) -> dict[str, str]:
    """Topic settings every radstream topic gets when replicated: writes with acks=all need this many
    in-sync replicas, and a replica that fell out of sync never becomes leader (no acknowledged loss)."""
    k = settings.kafka
    if k.replication_factor <= 1:
        return {}
    return {"min.insync.replicas": str(min(k.min_insync_replicas, k.replication_factor)),
            "unclean.leader.election.enable": "false"}


def topic_specs(settings: Settings, pipelines: list[str] | None = None) -> list[TopicSpec]:
    k = settings.kafka
    n = k.default_partitions
    keep = {"retention.ms": str(k.retention_ms), "cleanup.policy": "delete", **durability_config(settings)}
    specs = [
        TopicSpec(settings.topic("instances"), n, dict(keep), "InstanceReceived, key = patient key"),
        TopicSpec(settings.topic("series"), n, dict(keep), "SeriesCompleted, key = patient key"),
        TopicSpec(settings.topic("studies"), n, dict(keep), "StudyCompleted, key = patient key"),
        TopicSpec(settings.topic("results"), n, dict(keep), "InferenceCompleted/InferenceFailed, key = study UID"),
        TopicSpec(settings.topic("feedback"), n, dict(keep), "ReviewSubmitted/QcDecided, key = result id"),
        TopicSpec(settings.topic("deadletter"), 1, {**keep, "retention.ms": str(k.deadletter_retention_ms)},
                  f"DeadLetter, kept {_retention(k.deadletter_retention_ms)}"),
        TopicSpec(settings.topic("schemas"), 1, {"cleanup.policy": "compact", "retention.ms": "-1",
                                                 **durability_config(settings)},
                  "writer schemas by fingerprint (compacted)"),
    ]
    for name in pipelines if pipelines is not None else settings.pipeline_names():
        specs.append(TopicSpec(settings.topic(f"requests.{name}"), n, dict(keep),
                               f"InferenceRequested for pipeline {name}, key = patient key"))
    return specs


def _retention(ms: int) -> str:
    if ms < 0:
        return "forever"
    days, rest = divmod(ms, 24 * 3600 * 1000)
    return f"{days} days" if not rest else f"{ms / 3_600_000:g} h"


def admin(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings, "radstream-admin"))


def create_topics(settings: Settings, pipelines: list[str] | None = None, timeout: float = 30.0) -> list[str]:
    """Create missing topics; existing ones are left as they are. Returns the names created."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    todo = [s for s in topic_specs(settings, pipelines) if s.name not in existing]
    created: list[str] = []
    if todo:
        futures = client.create_topics(
            [NewTopic(s.name, s.partitions, settings.kafka.replication_factor, config=s.config) for s in todo],
            operation_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: a concurrent creator won
                    raise
    from radstream.kafka.schema_topic import publish_schemas

    publish_schemas(settings)
    return created


def add_partitions(settings: Settings, topic: str, partitions: int, timeout: float = 30.0) -> None:
    client = admin(settings)  # keep the client alive until the future completes
    fut = client.create_partitions([NewPartitions(topic, partitions)], operation_timeout=timeout)[topic]
    fut.result()


@dataclass
class TopicInfo:
    name: str
    partitions: int
    replication: int
    config: dict[str, str]


def describe_topics(settings: Settings, timeout: float = 30.0) -> list[TopicInfo]:
    client = admin(settings)
    md = client.list_topics(timeout=timeout)
    prefix = settings.kafka.topic_prefix + "."
    names = sorted(n for n in md.topics if n.startswith(prefix))
    configs: dict[str, dict[str, str]] = {}
    if names:
        futs = client.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, n) for n in names])
        for res, fut in futs.items():
            entries = fut.result()
            configs[res.name] = {
                k: str(v.value) for k, v in entries.items()
                if k in ("retention.ms", "cleanup.policy", "min.insync.replicas", "unclean.leader.election.enable")
            }
    out = []
    for n in names:
        t = md.topics[n]
        repl = len(next(iter(t.partitions.values())).replicas) if t.partitions else 0
        out.append(TopicInfo(n, len(t.partitions), repl, configs.get(n, {})))
    return out

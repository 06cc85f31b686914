"""Replay: re-run past requests of a pipeline, optionally into another model version.

The history is the pipeline's requests topic itself (Kafka keeps it for ``retention.ms``). A
replay reads it with its own consumer by assignment (no group membership, no commits: the live
group's offsets are never touched), selects by time range (``offsets_for_times``), Study Instance
UIDs or accession numbers, and re-emits each selected request with trigger REPLAY, a replay id,
a deterministic new request id and the chosen model version to the pipeline's replay topic,
which a replay worker group consumes. Progress is checkpointed to a file after every flushed
batch; a stopped replay resumes from it, and re-emitted requests keep their ids, so results stay
exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from radstream import __version__
from radstream.events.codec import codec_for
from radstream.events.models import InferenceRequested, Trigger, utcnow
from radstream.events.serde import DecodeError
from radstream.kafka.config import base_config
from radstream.kafka.producer import EventProducer
from radstream.kafka.topics import admin, durability_config
from radstream.ops.workers import replay_topic
from radstream.settings import Settings

PRODUCER = f"radstream-replay/{__version__}"


@dataclass
class Selection:
    since: datetime | None = None
    until: datetime | None = None
    study_uids: set[str] = field(default_factory=set)
    accession_numbers: set[str] = field(default_factory=set)

    def matches(self, req: InferenceRequested) -> bool:
        if req.replay_id is not None or req.shadow:
            return False  # replay live history only
        if self.until is not None and req.occurred_at > self.until:
            return False
        if self.since is not None and req.occurred_at < self.since:
            return False
        if self.study_uids or self.accession_numbers:
            return req.study_instance_uid in self.study_uids or (
                req.accession_number is not None and req.accession_number in self.accession_numbers)
        return True

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
                "study_uids": sorted(self.study_uids), "accession_numbers": sorted(self.accession_numbers)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Selection:
        return cls(datetime.fromisoformat(d["since"]) if d.get("since") else None,
                   datetime.fromisoformat(d["until"]) if d.get("until") else None,
                   set(d.get("study_uids", [])), set(d.get("accession_numbers", [])))


@dataclass
class Checkpoint:
    replay_id: str
    pipeline: str
    model_version: str | None
    selection: Selection
    end: dict[int, int]  # partition -> offset the replay stops at (the topic's end when it started)
    next: dict[int, int]  # partition -> next offset to read
    read: int = 0
    emitted: int = 0
    done: bool = False

    @staticmethod
    def path(settings: Settings, replay_id: str) -> Path:
        return settings.home / "replay" / f"{replay_id}.json"

    def save(self, settings: Settings) -> None:
        p = self.path(settings, self.replay_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "replay_id": self.replay_id, "pipeline": self.pipeline, "model_version": self.model_version,
            "selection": self.selection.to_json(), "end": self.end, "next": self.next, "read": self.read,
            "emitted": self.emitted, "done": self.done}, indent=2))
        tmp.replace(p)

    @classmethod
    def load(cls, settings: Settings, replay_id: str) -> Checkpoint | None:
        p = cls.path(settings, replay_id)
        if not p.exists():
            return None
        d = json.loads(p.read_text())
        return cls(d["replay_id"], d["pipeline"], d["model_version"], Selection.from_json(d["selection"]),
                   {int(k): v for k, v in d["end"].items()}, {int(k): v for k, v in d["next"].items()},
                   d["read"], d["emitted"], d["done"])

    @property
    def total(self) -> int:
        return sum(max(0, self.end[p] - self.next.get(p, self.end[p])) for p in self.end) + self.read


def ensure_replay_topic(settings: Settings, pipeline: str) -> str:
    """The pipeline's replay topic, created like its requests topic when missing."""
    topic = replay_topic(settings, pipeline)
    client = admin(settings)
    if topic in client.list_topics(timeout=10).topics:
        return topic
    source = client.list_topics(topic=settings.topic(f"requests.{pipeline}"), timeout=10).topics
    n = len(next(iter(source.values())).partitions) if source else settings.kafka.default_partitions
    fut = client.create_topics([NewTopic(topic, n, settings.kafka.replication_factor,
                                         config={"retention.ms": str(settings.kafka.retention_ms),
                                                 **durability_config(settings)})])[topic]
    try:
        fut.result()
    except Exception as exc:  # a concurrent creator won
        if "already exists" not in str(exc).lower():
            raise
    return topic


def replay_request(req: InferenceRequested, replay_id: str, model_version: str | None) -> InferenceRequested:
    return dataclasses.replace(
        req, event_id=str(uuid.uuid4()), occurred_at=utcnow(), producer=PRODUCER,
        request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"radstream:replay:{replay_id}:{req.request_id}")),
        trigger=Trigger.REPLAY, replay_id=replay_id, source_event_id=req.event_id,
        model_version=model_version or req.model_version, shadow=False,
    )


def _reader(settings: Settings, replay_id: str) -> Consumer:
    conf = base_config(settings, f"radstream-replay-{replay_id[:8]}")
    conf.update({"group.id": f"radstream-replay-reader-{replay_id}", "enable.auto.commit": False,
                 "enable.auto.offset.store": False, "isolation.level": "read_committed",
                 "auto.offset.reset": "earliest", "enable.partition.eof": True})
    return Consumer(conf)


def start(settings: Settings, pipeline: str, selection: Selection, model_version: str | None = None,
          replay_id: str | None = None) -> Checkpoint:
    """Plan a replay: the offsets to read, per partition, fixed now (later traffic is not replayed)."""
    rid = replay_id or uuid.uuid4().hex[:12]
    topic = settings.topic(f"requests.{pipeline}")
    c = _reader(settings, rid)
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts = sorted(md.partitions)
        end, nxt = {}, {}
        for p in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            end[p], nxt[p] = high, low
        if selection.since is not None:
            ms = int(selection.since.timestamp() * 1000)
            for tp in c.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=10):
                nxt[tp.partition] = tp.offset if tp.offset >= 0 else end[tp.partition]
    finally:
        c.close()
    cp = Checkpoint(rid, pipeline, model_version, selection, end, nxt)
    cp.save(settings)
    return cp


def run(settings: Settings, cp: Checkpoint, progress: Callable[[Checkpoint], None] | None = None,
        stop: threading.Event | None = None, batch: int = 200) -> Checkpoint:
    """Read from the checkpoint to the planned end, emit selected requests, checkpoint per batch."""
    ensure_replay_topic(settings, cp.pipeline)
    topic = settings.topic(f"requests.{cp.pipeline}")
    target = replay_topic(settings, cp.pipeline)
    codec = codec_for(settings)
    producer = EventProducer(settings, f"radstream-replay-{cp.replay_id[:8]}")
    todo = {p for p in cp.end if cp.next.get(p, cp.end[p]) < cp.end[p]}
    c = _reader(settings, cp.replay_id)
    try:
        if todo:
            c.assign([TopicPartition(topic, p, cp.next[p]) for p in sorted(todo)])
        pending = 0
        while todo and not (stop is not None and stop.is_set()):
            for msg in c.consume(500, 0.5):
                p = msg.partition()
                if msg.error() is not None:
                    if p in todo and cp.next[p] >= cp.end[p]:
                        todo.discard(p)
                    continue
                if p not in todo or msg.offset() >= cp.end[p]:
                    todo.discard(p)
                    continue
                cp.next[p] = msg.offset() + 1
                cp.read += 1
                try:
                    ev = codec.decode(msg.value()) if msg.value() is not None else None
                except DecodeError:
                    ev = None
                if isinstance(ev, InferenceRequested) and cp.selection.matches(ev):
                    out = replay_request(ev, cp.replay_id, cp.model_version)
                    producer.send(target, msg.key(), out)
                    cp.emitted += 1
                    pending += 1
                if cp.next[p] >= cp.end[p]:
                    todo.discard(p)
                if pending >= batch:
                    _flush(settings, producer, cp, progress)
                    pending = 0
                    if stop is not None and stop.is_set():
                        break  # later messages of this fetch are re-read on resume
        cp.done = not todo
        _flush(settings, producer, cp, progress)
    finally:
        c.close()
    return cp


def _flush(settings: Settings, producer: EventProducer, cp: Checkpoint,
           progress: Callable[[Checkpoint], None] | None) -> None:
    if producer.flush(60) != 0:
        raise RuntimeError("replay: Kafka did not acknowledge every replayed request")
    cp.save(settings)  # only after the requests are durable in Kafka
    if progress is not None:
        progress(cp)

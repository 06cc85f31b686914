"""The compacted ``<prefix>.schemas`` topic: writers publish their schemas by fingerprint,
so a reader built before a schema change can still resolve a newer writer's schema."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaException, Producer

from radstream.events.models import EVENT_TYPES
from radstream.events.schemas import current_schemas
from radstream.kafka.config import base_config
from radstream.kafka.read_to_end import ReadTimeout, read_to_end
from radstream.settings import Settings

log = logging.getLogger(__name__)


def publish_schemas(settings: Settings, timeout: float = 30.0) -> int:
    """Publish every current event schema (key = fingerprint). Idempotent under compaction."""
    producer = Producer({**base_config(settings, "radstream-schemas"), "acks": "all"})
    topic = settings.topic("schemas")
    n = 0
    schemas = current_schemas()
    for cls in EVENT_TYPES:
        sv = schemas[cls.SCHEMA_NAME]
        producer.produce(topic, key=sv.fingerprint, value=json.dumps(sv.schema, sort_keys=True).encode())
        n += 1
    if producer.flush(timeout) != 0:
        raise RuntimeError(f"could not publish schemas to {topic} within {timeout:.0f}s")
    return n


class KafkaSchemaLookup:
    """Reads the schemas topic from the start on a cache miss (rare: once per new writer version).

    Misses are hostile input too (a corrupt fingerprint names no schema): a fingerprint that was
    looked for in vain is not looked for again for ``retry_unknown_s``, and a broker that cannot
    be reached makes the lookup answer "unknown" (the caller's DecodeError and dead letter),
    never an exception. A fingerprint never seen before always triggers a read, so the first
    event of a new writer version is never turned away by the rate limit.
    """

    def __init__(self, settings: Settings, retry_unknown_s: float = 30.0, timeout_s: float = 5.0,
                 max_unknown: int = 10_000) -> None:
        self.settings = settings
        self.retry_unknown_s = retry_unknown_s
        self.timeout_s = timeout_s
        self.max_unknown = max_unknown
        self._known: dict[bytes, dict[str, Any]] = {}
        self._unknown: dict[bytes, float] = {}  # fingerprint -> when it was last looked for in vain
        self._lock = threading.Lock()

    def __call__(self, fingerprint: bytes) -> dict[str, Any] | None:
        with self._lock:
            if fingerprint in self._known:
                return self._known[fingerprint]
            now = time.monotonic()
            if now - self._unknown.get(fingerprint, float("-inf")) < self.retry_unknown_s:
                return None
            try:
                self._refresh(self.timeout_s)
            except KafkaException as exc:
                log.warning("schemas topic unreadable (%s); fingerprint %s stays unknown", exc, fingerprint.hex())
            found = self._known.get(fingerprint)
            if found is None:
                if len(self._unknown) >= self.max_unknown:
                    self._unknown.clear()
                self._unknown[fingerprint] = now
            return found

    def _refresh(self, timeout: float) -> None:
        topic = self.settings.topic("schemas")
        try:
            for msg in read_to_end(self.settings, [topic], timeout=timeout, client_id="radstream-schema-lookup"):
                key, value = msg.key(), msg.value()
                if isinstance(key, bytes) and value:
                    try:
                        self._known[key] = json.loads(value)
                    except ValueError:
                        log.warning("ignoring unreadable entry in %s", topic)
        except ReadTimeout as exc:
            log.warning("schemas topic not read to its end: %s", exc)

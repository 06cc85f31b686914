"""librdkafka configuration built from the settings."""

from __future__ import annotations

from typing import Any

from radstream.settings import Settings


def base_config(settings: Settings, client_id: str) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "client.id": client_id,
    }
    conf.update(settings.kafka.client_extra)
    return conf

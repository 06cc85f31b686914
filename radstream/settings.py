"""The one typed settings object.

Values come, in increasing priority, from the defaults below, an optional config file
(YAML or JSON, ``--config`` or ``RADSTREAM_CONFIG``), and ``RADSTREAM_*`` environment
variables (nested with ``__``, e.g. ``RADSTREAM_KAFKA__BOOTSTRAP_SERVERS``).
Secrets are ``SecretStr`` and never appear in ``repr``, logs or ``radstream config show``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "localhost:9092"
    topic_prefix: str = "radstream"
    default_partitions: int = Field(6, ge=1, description="partitions of per-patient topics")
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(2, ge=1, description="applied only when replication_factor > 1")
    retention_ms: int = Field(30 * 24 * 3600 * 1000, description="-1 keeps events forever")
    schema_registry_url: str | None = Field(
        None, description="Confluent-compatible registry; unset = Avro single-object encoding"
    )
    client_extra: dict[str, str] = Field(default_factory=dict, description="extra librdkafka settings")


class PostgresSettings(BaseModel):
    host: str = "localhost"
    port: int = 5432
    user: str = "radstream"
    password: SecretStr = SecretStr("radstream")
    database: str = "radstream"
    managed: bool = Field(True, description="radstream dev up runs a project-local cluster")

    def conninfo(self) -> str:
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password.get_secret_value()} dbname={self.database}"
        )


class DicomSettings(BaseModel):
    port: int = 11112
    ae_title: str = "RADSTREAM"
    bind_address: str = "0.0.0.0"
    max_associations: int = 32
    max_pdu_size: int = 0
    allowed_calling_ae_titles: list[str] = Field(default_factory=list)
    allowed_peers: list[str] = Field(default_factory=list)


class StoreSettings(BaseModel):
    root: Path | None = Field(None, description="folder for instance bytes; default <home>/store")


class TritonSettings(BaseModel):
    host: str = "localhost"
    http_port: int = 8000
    grpc_port: int = 8001
    protocol: str = "grpc"


class WebSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    session_secret: SecretStr = SecretStr("change-me-web-session-secret")


class SinkSettings(BaseModel):
    """The PostgreSQL sinks (results, feedback) and the longitudinal rules they serve."""

    batch_size: int = Field(2000, ge=1, description="most events written in one database transaction")
    poll_timeout_s: float = Field(0.5, gt=0, description="longest wait for a batch to fill")
    retry_initial_s: float = Field(0.5, gt=0, description="first back-off after a database error")
    retry_max_s: float = Field(15.0, gt=0, description="longest back-off between database retries")
    progression_threshold_pct: dict[str, float] = Field(
        default_factory=lambda: {"brain-tumour": 25.0},
        description="per pipeline: volume increase from baseline, in %, that flags progression",
    )
    qc_required: list[str] = Field(
        default_factory=lambda: ["hip-fracture"],
        description="pipelines whose results reach readers only after a QC approval",
    )


class Settings(BaseSettings):
    """Everything radstream reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="RADSTREAM_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(Path("var"), description="project-local folder for data, logs and pid files")
    site_secret: SecretStr = Field(
        SecretStr("radstream-dev-site-secret"), description="HMAC key of the patient key"
    )
    pipelines: list[str] = Field(
        default_factory=lambda: ["brain-tumour", "liver", "hip-fracture"],
        description="pipelines that get a requests topic",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    sinks: SinkSettings = Field(default_factory=SinkSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (explicit / config file) < env: environment variables win over the file.
        return (env_settings, init_settings, file_secret_settings)

    @property
    def store_root(self) -> Path:
        return self.store.root if self.store.root is not None else self.home / "store"

    def topic(self, name: str) -> str:
        """Full topic name for a short name such as ``instances`` or ``requests.brain``."""
        return f"{self.kafka.topic_prefix}.{name}"

    def redacted(self) -> dict[str, Any]:
        """A JSON-safe view with every secret masked."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        return data


def _read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, the config file, env vars and explicit overrides."""
    path = config_file or (Path(os.environ["RADSTREAM_CONFIG"]) if os.environ.get("RADSTREAM_CONFIG") else None)
    values: dict[str, Any] = _read_config_file(path) if path else {}
    values.update(overrides)
    return Settings(**values)

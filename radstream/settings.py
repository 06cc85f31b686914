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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


def refuse_moved(data: Any, moved: dict[str, str]) -> Any:
    """Refuse keys that used to live in a section: the setting now lives where ``moved`` says."""
    if isinstance(data, dict):
        for key, where in moved.items():
            if key in data:
                raise ValueError(f"{key} is no longer read here: {where}")
    return data


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "localhost:9092"
    topic_prefix: str = "radstream"
    default_partitions: int = Field(6, ge=1, description="partitions of per-patient topics")
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(2, ge=1, description="applied only when replication_factor > 1")
    retention_ms: int = Field(30 * 24 * 3600 * 1000, description="-1 keeps events forever")
    deadletter_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, ge=-1, description="retention of the dead-letter topic, shorter than the events' "
        "(dead letters hold the input that failed); -1 keeps them forever; applied when topics are created")
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


GIB = 1024**3


class DicomSettings(BaseModel):
    """The DICOM network side of the ingest SCP: where it listens and whom it serves, how much."""

    port: int = 11112
    ae_title: str = "RADSTREAM"
    bind_address: str = Field(
        "127.0.0.1", description="listen address; loopback by default (development, tests): production sets "
        "the address the modalities reach, or 0.0.0.0 (the container images and manifests do)")
    max_associations: int = Field(32, ge=1, description="concurrent associations of the whole SCP")
    max_associations_per_peer: int = Field(
        8, ge=0, description="concurrent associations from one remote address; more are refused with "
        "A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded (0 = only max_associations)")
    max_pdu_size: int = 0
    allowed_calling_ae_titles: list[str] = Field(
        default_factory=list, description="calling AE titles served; others are refused (A-ASSOCIATE-RJ, "
        "calling AE title not recognised); empty = any")
    allowed_peers: list[str] = Field(
        default_factory=list, description="remote addresses or CIDR networks served (e.g. 10.20.0.0/16); "
        "others are refused; empty = any")
    max_instance_bytes: int = Field(
        2 * GIB, ge=0, description="largest instance accepted (its Part 10 file: the data set as sent plus the "
        "file meta); a larger one is refused with 0xA700, written no further than this and never stored "
        "(0 = unlimited)")
    max_association_bytes: int = Field(
        32 * GIB, ge=0, description="bytes one association may send in all; the C-STORE that crosses it is "
        "refused with 0xA700 and the association is aborted at the next one (0 = unlimited)")
    idle_timeout_s: float = Field(
        60.0, gt=0, description="an association with no network traffic for this long is aborted "
        "(pynetdicom's network and DIMSE timeouts)")
    acse_timeout_s: float = Field(
        30.0, gt=0, description="a connection must complete its association request within this long")


class IngestTlsSettings(BaseModel):
    """DICOM TLS for the ingest SCP (off unless a certificate is given)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = Field(None, description="CA bundle; with it, clients must present a certificate")
    client_ae_titles: dict[str, list[str]] = Field(
        default_factory=dict,
        description="mutual TLS: client certificate identity (subject CN or a DNS subjectAltName) -> the calling "
        "AE titles it may use ('*' = any); an association whose certificate is not mapped to its calling AE "
        "title is refused; empty = any certificate the CA signed may use any calling AE title; needs ca_file",
    )

    @model_validator(mode="after")
    def _mapping_needs_client_certificates(self) -> IngestTlsSettings:
        if self.client_ae_titles and (self.ca_file is None or self.cert_file is None):
            raise ValueError("ingest.tls.client_ae_titles needs ingest.tls.cert_file and ca_file (mutual TLS)")
        return self


class IngestSettings(BaseModel):
    """The DICOM ingest SCP (``radstream ingest``)."""

    called_ae_titles: dict[str, list[str]] = Field(
        default_factory=dict,
        description="further called AE titles -> the pipelines an instance sent to it goes to (their routing rules "
                    "skipped, their selection applied); an empty list: routing rules decide, as for dicom.ae_title. "
                    "Pipeline files add theirs with `ae_titles:`",
    )
    routing_tags: list[str] = Field(
        default_factory=list,
        description="DICOM keywords collected onto the events for routing rules, besides the defaults "
                    "(radstream.pipelines.facts.DEFAULT_ROUTING_TAGS) and those pipeline files name",
    )

    @field_validator("routing_tags")
    @classmethod
    def _carriable(cls, v: list[str]) -> list[str]:
        from radstream.pipelines.facts import refusal

        refused = [why for kw in v if (why := refusal(kw)) is not None]
        if refused:
            raise ValueError("; ".join(refused))
        return v
    transfer_syntaxes: list[str] = Field(
        default_factory=lambda: [
            "1.2.840.10008.1.2",  # implicit VR little endian
            "1.2.840.10008.1.2.1",  # explicit VR little endian
            "1.2.840.10008.1.2.2",  # explicit VR big endian
            "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
            "1.2.840.10008.1.2.4.50",  # JPEG baseline
            "1.2.840.10008.1.2.4.51",  # JPEG extended
            "1.2.840.10008.1.2.4.57",  # JPEG lossless
            "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
            "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
            "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
            "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
            "1.2.840.10008.1.2.4.91",  # JPEG 2000
            "1.2.840.10008.1.2.5",  # RLE lossless
        ],
        description="transfer syntaxes accepted as sent (never transcoded)",
    )
    publish: bool = Field(True, description="publish InstanceReceived; off only for benchmarks")
    publish_timeout_s: float = Field(5.0, gt=0, description="wait for Kafka's ack before using the outbox")
    outbox: bool = Field(True, description="queue events durably while Kafka is down (else refuse C-STORE)")
    outbox_path: Path | None = Field(
        None, description="the write-ahead outbox (SQLite); default <home>/ingest/outbox.sqlite3. Durable state: "
                          "on a persistent volume of its own per ingest instance (compose, K8s StatefulSet)")
    publish_mode: Literal["outbox", "kafka"] = Field(
        "outbox",
        description="outbox: success once the event is fsynced in the outbox, drained to Kafka in order at once; "
        "kafka: success on Kafka's ack (the outbox only when Kafka does not ack); kafka when outbox is off",
    )
    close_drain_s: float = Field(5.0, ge=0, description="on shutdown, wait this long for the outbox to drain")
    outbox_linger_ms: float = Field(
        100.0, ge=0, description="publish_mode outbox: while events stream in, send a batch to Kafka at most this "
        "often (the first event after a quiet spell goes at once)",
    )
    linger_ms: float = Field(0.0, ge=0)
    event_driven_reactor: bool = Field(
        True, description="pynetdicom's association loops wait on events instead of 1 ms polling sleeps"
    )
    max_pdu_size: int = Field(
        4 * 1024 * 1024, ge=0, description="largest PDU received; bounds memory per association (0 = unlimited)"
    )
    metrics_port: int | None = Field(
        None, ge=0, description="/metrics, /healthz, /readyz of the SCP; 0 = off; unset = observability.ports.ingest"
    )
    metrics_address: str | None = Field(None, description="bind address; unset = observability.address")
    processes: int = Field(
        1, ge=0, description="SCP processes serving the one DICOM port (`radstream ingest --processes`; Linux "
        "SO_REUSEPORT), each with its own outbox <outbox dir>/<outbox name>-<slot>.sqlite3; 1 = one process, "
        "no pool; 0 = one per CPU core")
    pool_metrics_port: int = Field(
        9150, ge=0, description="a pool's /metrics, /healthz, /readyz: process <slot> on this port + slot when "
        "metrics_port is unset (else on metrics_port + slot); metrics off (0) stays off")
    pool_orphan_sweep_s: float = Field(
        30.0, gt=0, description="a pool process drains, this often and at start, outboxes no process of the pool "
        "owns (slots of an earlier, larger pool; the single process's outbox) when it can lease them")
    pool_stop_timeout_s: float = Field(
        30.0, gt=0, description="on SIGTERM, how long the pool waits for its processes before SIGKILL")
    tls: IngestTlsSettings = Field(default_factory=IngestTlsSettings)
    deadletter_keep_phi: bool = Field(
        False, description="keep patient, accession, physician and institution attributes in the DICOM headers "
        "of dead letters; off: their values are blanked (same lengths, so the structure that failed is kept) "
        "and everything past the first element that cannot be parsed is dropped")


class StoreSettings(BaseModel):
    root: Path | None = Field(None, description="folder for instance bytes; default <home>/store")


class TritonSettings(BaseModel):
    host: str = "localhost"
    http_port: int = 8000
    grpc_port: int = 8001
    protocol: str = "grpc"
    metrics_port: int = 8002
    managed: bool = Field(True, description="radstream dev up runs the pytriton server (CPU) when host is local")
    request_timeout_s: float = Field(60.0, gt=0, description="per inference call")
    retries: int = Field(5, ge=0, description="retries of a failed call (unavailable server) before giving up")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(8.0, gt=0)
    model_repository: Path | None = Field(None, description="reference ONNX models; default docker/triton")
    wait_model_ms: float = Field(50.0, ge=0, description="time the wait_ref benchmark model waits per batch")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$",
                        description="where `radstream triton serve` computes: cpu (onnxruntime) or cuda[:N] (PyTorch)")
    access_token: SecretStr = Field(
        SecretStr(""), description="the token of Triton's restricted endpoints (shared-memory, model-repository): "
        "`radstream triton serve` restricts them with it and clients send it. Empty: the token a local managed "
        "server was started with (<home>/secrets/triton_access_token), else none (shared memory then falls back "
        "to the socket)")
    shared_memory: Literal["auto", "system", "off"] = Field(
        "auto", description="tensors through Triton's system shared memory instead of the socket: auto = when "
                            "host is this machine (localhost, 127.0.0.1, ::1); system = always (same host only)")

    @property
    def use_shared_memory(self) -> bool:
        if self.shared_memory == "auto":
            return self.host in ("localhost", "127.0.0.1", "::1")
        return self.shared_memory == "system"


# the shipped placeholders of the three secrets: public, so never used as keys (radstream.secrets).
# In development radstream replaces them with random secrets under <home>/secrets/; in production a
# process that needs one of them refuses to start while it is left at its placeholder (or empty).
DEFAULT_SESSION_SECRET = "change-me-web-session-secret"
DEFAULT_SITE_SECRET = "radstream-dev-site-secret"
DEFAULT_BLINDING_SALT = "change-me-blinding-salt"


class InferenceSettings(BaseModel):
    """Inference workers (``radstream infer --pipeline NAME``)."""

    blinding_salt: SecretStr = Field(
        SecretStr(DEFAULT_BLINDING_SALT),
        description="HMAC key of the blinding hash; production: must be set; development: a random one under "
                    "<home>/secrets/ when left at this placeholder")
    max_attempts: int = Field(3, ge=1, description="attempts of a request whose failure is retriable")
    poll_timeout_s: float = Field(1.0, gt=0)
    pacs_host: str | None = Field(None, description="PACS export destination (C-STORE SCU); unset = off")
    pacs_port: int = 104
    pacs_ae_title: str = "PACS"
    calling_ae_title: str = "RADSTREAM"

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, {"pipelines_dir": "set the top-level pipelines_dir"})


class LdapSettings(BaseModel):
    """Optional LDAP / Active Directory bind for web sign-in (roles stay in the users table)."""

    enabled: bool = False
    server_uri: str = "ldap://localhost:389"
    user_dn_template: str = Field(
        "uid={username},ou=people,dc=example,dc=org",
        description="DN bound as; {username} is RDN-escaped. AD: '{username}@example.org' (UPN)",
    )
    start_tls: bool = True
    ca_file: Path | None = None
    timeout_s: float = Field(5.0, gt=0)


class WebSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    session_secret: SecretStr = Field(
        SecretStr(DEFAULT_SESSION_SECRET),
        description="key that signs session cookies (a session id; the session itself is in PostgreSQL); "
                    "production: must be set; development: left at this placeholder, a random one is made "
                    "under <home>/secrets/. Changing it ends every session")
    session_absolute_s: int = Field(8 * 3600, ge=1, description="a session ends this long after sign-in, "
                                    "whatever it does (opening results does not extend it)")
    session_idle_s: int = Field(30 * 60, ge=1, description="a session ends after this long without a request")
    secure_cookies: bool | None = Field(
        None, description="mark cookies Secure (HTTPS only) and send HSTS; unset = on outside development")
    max_upload_mb: int = Field(200, ge=1, description="largest corrected SEG upload")
    max_form_bytes: int = Field(64 * 1024, ge=1024, description="largest request body of any other form; "
                                "a larger Content-Length gets 413 before the body is read")
    login_free_failures: int = Field(5, ge=1, description="failed sign-ins of one account within "
                                     "login_window_s before it is locked (back-off)")
    login_free_failures_per_address: int = Field(20, ge=1, description="the same for one client address")
    login_window_s: float = Field(15 * 60.0, gt=0, description="failures this much older than the latest are "
                                  "forgotten (the count starts again)")
    login_lockout_s: float = Field(30.0, gt=0, description="first lock; each further failure doubles it")
    login_lockout_max_s: float = Field(15 * 60.0, gt=0, description="longest lock")
    password_min_length: int = Field(12, ge=8, description="shortest password `users add`/`passwd` accept")
    password_deny_file: Path | None = Field(
        None, description="further passwords to refuse, one a line (the shipped list of common ones always "
                          "applies)")
    ldap: LdapSettings = Field(default_factory=LdapSettings)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # session_max_age_s was the signed cookie's lifetime: it is the absolute lifetime now
        if isinstance(data, dict) and "session_max_age_s" in data and "session_absolute_s" not in data:
            data = {**data, "session_absolute_s": data["session_max_age_s"]}
        return data

    def cookies_secure(self, environment: str) -> bool:
        return self.secure_cookies if self.secure_cookies is not None else environment != "development"


class SinkSettings(BaseModel):
    """The PostgreSQL sinks (results, feedback) and the longitudinal rules they serve."""

    batch_size: int = Field(5000, ge=1, description="most events written in one database transaction")
    start_batch_size: int = Field(
        1000, ge=1,
        description="most events in the first batch after an idle spell (the database starts sooner); "
                    "on a backlog batches still grow to batch_size",
    )
    read_ahead_chunk: int = Field(
        250, ge=1,
        description="most events read and decoded at once while a batch is written: a finished write "
                    "waits for one such chunk at most before the next batch goes to the database",
    )
    poll_timeout_s: float = Field(0.5, gt=0, description="longest wait for a batch to fill")
    retry_initial_s: float = Field(0.5, gt=0, description="first back-off after a database error")
    retry_max_s: float = Field(15.0, gt=0, description="longest back-off between database retries")
    progression_threshold_pct: dict[str, float] = Field(
        default_factory=lambda: {"brain-tumour": 25.0},
        description="per pipeline: volume increase from baseline, in %, that flags progression",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, {"qc_required": "say `qc_required: true` in the pipeline's file"})


class TimeoutOverride(BaseModel):
    """Quiet periods for one source (a called AE title); unset fields keep the defaults."""

    series_quiet_s: float | None = Field(None, gt=0)
    patient_quiet_s: float | None = Field(None, gt=0)
    max_age_s: float | None = Field(None, gt=0)


class AggregatorSettings(BaseModel):
    """stream-apps aggregator: completion of series and studies (radstream aggregate)."""

    group_id: str = "radstream-aggregator"
    series_quiet_s: float = Field(60.0, gt=0, description="a series closes after this long without instances")
    patient_quiet_s: float = Field(60.0, gt=0, description="the patient's studies close after this quiet period")
    max_age_s: float = Field(4 * 3600.0, gt=0, description="force-complete a series/study open this long")
    timer_interval_s: float = Field(1.0, gt=0, description="how often deadlines are checked")
    retain_closed_s: float = Field(24 * 3600.0, gt=0, description="closed state kept for late data and dedupe")
    recovery_grace_s: float = Field(
        15.0, ge=0, description="after the broker was unreachable, a failed transaction, or a restart that found "
        "deadlines already passed: timers wait this long, so instances held upstream (an SCP's outbox) arrive first")
    overrides: dict[str, TimeoutOverride] = Field(
        default_factory=dict, description="per called AE title: quiet periods for that source"
    )
    batch_size: int = Field(10000, ge=1, description="most messages per consume-transform-produce transaction")


class DispatcherSettings(BaseModel):
    """stream-apps dispatcher: completed series/studies -> InferenceRequested (radstream dispatch)."""

    group_id: str = "radstream-dispatcher"

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, {"pipelines_dir": "set the top-level pipelines_dir"})


class ObservabilitySettings(BaseModel):
    """Prometheus /metrics, /healthz and /readyz of every process (radstream.observability)."""

    address: str = Field("127.0.0.1", description="bind address of /metrics and health (0.0.0.0 in containers)")
    ports: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_METRICS_PORTS),
        description="per process (ingest, aggregate, dispatch, infer, sink_results, sink_feedback, web, replay, "
        "triton): port of /metrics and the health endpoints; 0 = off; entries given are merged over the defaults",
    )
    readiness_timeout_s: float = Field(2.0, gt=0, description="time each readiness check may take")
    liveness_stale_s: float = Field(120.0, gt=0, description="/healthz fails when the main loop beat is older")

    @field_validator("ports", mode="after")
    @classmethod
    def _merge_default_ports(cls, value: dict[str, int]) -> dict[str, int]:
        return {**DEFAULT_METRICS_PORTS, **value}

    def port_for(self, component: str) -> int:
        return self.ports.get(component, 0)


DEFAULT_METRICS_PORTS: dict[str, int] = {
    "ingest": 9110,
    "aggregate": 9111,
    "dispatch": 9112,
    "infer": 9113,
    "sink_results": 9114,
    "sink_feedback": 9115,
    "web": 9116,
    "replay": 9117,
    "triton": 9118,
    "lag_exporter": 9119,
}


class _FileEnvSource(PydanticBaseSettingsSource):
    """``RADSTREAM_<NAME>_FILE=/run/secrets/x``: the value of ``RADSTREAM_<NAME>`` is read from that file.

    Docker and Kubernetes secrets arrive as files; this keeps them out of the environment.
    Nested names work as for plain variables (``RADSTREAM_POSTGRES__PASSWORD_FILE``). A plain
    variable wins over its ``_FILE`` form; a ``_FILE`` naming a missing file is an error.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        prefix, suffix = "RADSTREAM_", "_FILE"
        out: dict[str, Any] = {}
        for name, path in os.environ.items():
            upper = name.upper()
            if not upper.startswith(prefix) or not upper.endswith(suffix) or upper == "RADSTREAM_CONFIG_FILE":
                continue
            if upper[: -len(suffix)] in {k.upper() for k in os.environ}:
                continue
            parts = [p.lower() for p in name[len(prefix): -len(suffix)].split("__") if p]
            if not parts or not _is_secret_target(self.settings_cls, parts):
                continue
            value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            node = out
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return out


def _is_secret_target(model: type[BaseModel], parts: list[str]) -> bool:
    """True when ``parts`` names a field (not itself a ``*_file`` field such as ``tls.cert_file``)."""
    for i, part in enumerate(parts):
        fields = model.model_fields
        if i == len(parts) - 1:
            return part in fields and f"{part}_file" not in fields
        ann = fields[part].annotation if part in fields else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return False
        model = ann
    return False


class Settings(BaseSettings):
    """Everything radstream reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="RADSTREAM_", env_nested_delimiter="__", extra="ignore"
    )

    environment: Literal["development", "production"] = Field(
        "production",
        description="production: a secret left at its shipped placeholder (or empty) stops the process that "
                    "needs it; development (radstream dev up, demo): random ones are made under <home>/secrets/",
    )
    home: Path = Field(Path("var"), description="project-local folder for data, logs and pid files")
    site_secret: SecretStr = Field(
        SecretStr(DEFAULT_SITE_SECRET),
        description="HMAC key of the patient key; permanent for a site's data (its fingerprint is kept in the "
                    "store root); production: must be set",
    )
    accept_new_site_secret: bool = Field(
        False, description="start although the site secret differs from the one the existing data was keyed "
                           "with (records the new fingerprint); patient keys will not match older data")
    pipelines: list[str] | None = Field(
        None, description="the pipelines this deployment runs (each a file in pipelines_dir); default: every "
                          "enabled pipeline file. They get requests topics, workers and the results sink's reads")
    pipelines_dir: Path | None = Field(
        None, description="the pipeline files (every process reads the same folder); default <project>/pipelines")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    sinks: SinkSettings = Field(default_factory=SinkSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    aggregator: AggregatorSettings = Field(default_factory=AggregatorSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (explicit / config file) < *_FILE secrets < env: environment variables win over the file.
        return (env_settings, _FileEnvSource(settings_cls), init_settings, file_secret_settings)

    def pipeline_names(self) -> list[str]:
        """The pipelines this deployment runs: ``pipelines`` if set, else every enabled pipeline file."""
        if self.pipelines is not None:
            return list(self.pipelines)
        from radstream.pipelines.spec import deployment_pipelines

        return [p.name for p in deployment_pipelines(self)]

    @property
    def pipelines_folder(self) -> Path:
        from radstream.pipelines.spec import DEFAULT_PIPELINES_DIR

        return self.pipelines_dir if self.pipelines_dir is not None else DEFAULT_PIPELINES_DIR

    @property
    def outbox_path(self) -> Path:
        p = self.ingest.outbox_path
        return p if p is not None else self.home / "ingest" / "outbox.sqlite3"

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

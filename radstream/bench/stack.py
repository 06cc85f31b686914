"""A private radstream deployment for load and fault runs: its own Kafka, PostgreSQL, Triton and
every radstream process, all on free ports under one home folder.

Nothing here listens on a default port, so it runs beside `radstream dev up` and beside other
test sessions. The processes are the real ones (``python -m radstream.cli <subcommand>`` via
:class:`~radstream.devenv.services.Services`), so a ``kill -9`` is a real crash.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from radstream.devenv.kafka import KafkaCluster, KafkaServer
from radstream.devenv.postgres import PostgresServer
from radstream.devenv.process import free_port, port_open, wait_until
from radstream.devenv.services import Services, ServiceSpec, radstream_services
from radstream.devenv.triton import TritonServer
from radstream.models.build import DEFAULT_REPOSITORY
from radstream.settings import DEFAULT_METRICS_PORTS, Settings

# every /metrics and health port off: nothing of ours may collide with a fixed port
NO_METRICS = json.dumps(dict.fromkeys(DEFAULT_METRICS_PORTS, 0))
SITE_SECRET = "bench-site-secret"


@dataclass
class StackConfig:
    series_quiet_s: float = 3.0
    patient_quiet_s: float = 4.0
    partitions: int = 3
    topic_prefix: str = "bench"
    pipelines: tuple[str, ...] = ("brain-tumour", "liver", "hip-fracture")
    pipelines_dir: Path | None = None  # default: the project's pipelines/
    brokers: int = 1  # 3: a KRaft cluster, every topic replicated 3 times with min ISR 2
    triton_wait_ms: float = 0.0
    triton_repository: Path | None = None  # default: docker/triton (the reference models)
    web: bool = False  # also the review app and the feedback sink (scenario tests read the pages)
    extra_env: dict[str, str] = field(default_factory=dict)


class BenchStack:
    """Start with :meth:`up`, stop with :meth:`down`; :meth:`kill9` / :meth:`restart` for faults."""

    def __init__(self, home: Path, config: StackConfig | None = None) -> None:
        self.home = Path(home).resolve()
        self.config = config or StackConfig()
        self.kafka: KafkaServer | KafkaCluster = (
            KafkaServer(self.home / "kafka", port=free_port(), controller_port=free_port())
            if self.config.brokers == 1 else
            KafkaCluster(self.home / "kafka", [free_port() for _ in range(self.config.brokers)],
                         [free_port() for _ in range(self.config.brokers)]))
        self.postgres = PostgresServer(self.home / "postgres", port=free_port())
        self.triton = TritonServer(self.home / "triton", http_port=free_port(), grpc_port=free_port(),
                                   metrics_port=free_port(), wait_ms=self.config.triton_wait_ms,
                                   repository=self.config.triton_repository or DEFAULT_REPOSITORY,
                                   access_token=secrets.token_urlsafe(32))  # shared memory for this stack's workers
        self.dicom_port = free_port()
        self.web_port = free_port()
        self.session_secret = secrets.token_urlsafe(32)  # the review app's, private to this stack
        self.settings = Settings.model_validate(self._settings_values())
        self.services = Services(self.settings)
        self.specs: dict[str, ServiceSpec] = {}

    # --- configuration -------------------------------------------------------------------------

    def _settings_values(self) -> dict[str, object]:
        c = self.config
        return {
            "environment": "development",  # a throwaway stack: random secrets where none is given
            "home": self.home,
            "site_secret": SITE_SECRET,
            "pipelines": list(c.pipelines),
            "pipelines_dir": c.pipelines_dir,
            "kafka": {"bootstrap_servers": self.kafka.bootstrap, "topic_prefix": c.topic_prefix,
                      "replication_factor": c.brokers, "min_insync_replicas": min(2, c.brokers),
                      "default_partitions": c.partitions},
            "postgres": {"host": "127.0.0.1", "port": self.postgres.port, "managed": False},
            # every simulated scanner sends from loopback: one address, so no per-peer association limit
            "dicom": {"port": self.dicom_port, "bind_address": "127.0.0.1", "max_associations_per_peer": 0},
            "ingest": {"metrics_port": 0},
            "triton": {"host": "127.0.0.1", "http_port": self.triton.http_port, "grpc_port": self.triton.grpc_port,
                       "metrics_port": self.triton.metrics_port, "managed": False,
                       "backoff_initial_s": 0.5, "backoff_max_s": 4.0, "access_token": self.triton.access_token},
            "aggregator": {"series_quiet_s": c.series_quiet_s, "patient_quiet_s": c.patient_quiet_s,
                           "timer_interval_s": 0.5},
            "sinks": {"poll_timeout_s": 0.2},
            "observability": {"ports": dict.fromkeys(DEFAULT_METRICS_PORTS, 0)},
        }

    def env(self) -> dict[str, str]:
        """What every child process needs so its Settings equal ``self.settings``."""
        s = self.settings
        env = {
            "RADSTREAM_ENVIRONMENT": "development",
            "RADSTREAM_HOME": str(self.home),
            "RADSTREAM_SITE_SECRET": SITE_SECRET,
            "RADSTREAM_PIPELINES": json.dumps(list(self.config.pipelines)),
            "RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "RADSTREAM_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
            "RADSTREAM_KAFKA__DEFAULT_PARTITIONS": str(s.kafka.default_partitions),
            "RADSTREAM_KAFKA__REPLICATION_FACTOR": str(s.kafka.replication_factor),
            "RADSTREAM_KAFKA__MIN_INSYNC_REPLICAS": str(s.kafka.min_insync_replicas),
            "RADSTREAM_POSTGRES__HOST": "127.0.0.1",
            "RADSTREAM_POSTGRES__PORT": str(s.postgres.port),
            "RADSTREAM_POSTGRES__MANAGED": "false",
            "RADSTREAM_DICOM__PORT": str(s.dicom.port),
            "RADSTREAM_DICOM__BIND_ADDRESS": "127.0.0.1",
            "RADSTREAM_DICOM__MAX_ASSOCIATIONS_PER_PEER": "0",
            "RADSTREAM_INGEST__METRICS_PORT": "0",
            "RADSTREAM_TRITON__HOST": "127.0.0.1",
            "RADSTREAM_TRITON__HTTP_PORT": str(s.triton.http_port),
            "RADSTREAM_TRITON__GRPC_PORT": str(s.triton.grpc_port),
            "RADSTREAM_TRITON__METRICS_PORT": str(s.triton.metrics_port),
            "RADSTREAM_TRITON__MANAGED": "false",
            "RADSTREAM_TRITON__BACKOFF_INITIAL_S": "0.5",
            "RADSTREAM_TRITON__BACKOFF_MAX_S": "4.0",
            "RADSTREAM_AGGREGATOR__SERIES_QUIET_S": str(self.config.series_quiet_s),
            "RADSTREAM_AGGREGATOR__PATIENT_QUIET_S": str(self.config.patient_quiet_s),
            "RADSTREAM_AGGREGATOR__TIMER_INTERVAL_S": "0.5",
            "RADSTREAM_SINKS__POLL_TIMEOUT_S": "0.2",
            "RADSTREAM_OBSERVABILITY__PORTS": NO_METRICS,
            "RADSTREAM_WEB__PORT": str(self.web_port),
            "RADSTREAM_WEB__HOST": "127.0.0.1",
            "RADSTREAM_WEB__SESSION_SECRET": self.session_secret,
            "RADSTREAM_TRITON__ACCESS_TOKEN": self.triton.access_token or "",
        }
        if self.config.pipelines_dir is not None:
            env["RADSTREAM_PIPELINES_DIR"] = str(self.config.pipelines_dir)
        env.update(self.config.extra_env)
        return env

    def service_specs(self) -> list[ServiceSpec]:
        """The pipeline's processes (the web app and the feedback sink only with ``web``), metrics ports off."""
        env = self.env()
        out = []
        for spec in radstream_services(self.settings, env):
            if spec.name in ("web", "sink-feedback") and not self.config.web:
                continue
            out.append(ServiceSpec(spec.name, spec.args, {**spec.env, "RADSTREAM_OBSERVABILITY__PORTS": NO_METRICS}))
        return out

    # --- lifecycle -----------------------------------------------------------------------------

    def up(self, timeout: float = 240.0) -> None:
        """Infrastructure (Triton starts in parallel with Kafka and PostgreSQL), schema, topics, processes."""
        from radstream.db.migrate import migrate
        from radstream.kafka.topics import create_topics

        self.home.mkdir(parents=True, exist_ok=True)
        errors: list[BaseException] = []

        def start_triton() -> None:
            try:
                self.triton.start(timeout=timeout)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=start_triton, name="bench-triton", daemon=True)
        t.start()
        self.postgres.start()
        self.kafka.start()
        create_topics(self.settings)
        migrate(self.settings)
        t.join(timeout)
        if errors:
            raise errors[0]
        self._triton_sane()
        self.specs = {s.name: s for s in self.service_specs()}
        self.services.start(list(self.specs.values()))
        self.wait_ready()

    def _triton_sane(self) -> None:
        """pytriton can answer ready while a model's Python stub failed its handshake (seen on a loaded
        2-core machine); every call to that model then fails. Restart it once when the log says so."""
        log = self.triton.process.log_file
        if log.exists() and "Failed to initialize Python stub" in log.read_text(errors="replace"):
            self.triton.stop(timeout=60)
            log.rename(log.with_suffix(".failed-start.log"))
            self.triton.start()

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_until(lambda: port_open("127.0.0.1", self.dicom_port), timeout, what="the SCP to listen")
        if self.config.web:
            wait_until(lambda: port_open("127.0.0.1", self.web_port), timeout, what="the review app to listen")
        for name in self.specs:
            if not self.services.process(name).running():
                raise RuntimeError(f"{name} exited; see {self.services.process(name).log_file}")

    def down(self) -> None:
        for name in list(self.specs):
            self.services.process(name).stop(timeout=15)
        self.triton.stop(timeout=30)
        self.kafka.stop()
        self.postgres.stop()

    # --- faults --------------------------------------------------------------------------------

    def kill9(self, name: str) -> None:
        """SIGKILL a radstream process (its whole process group)."""
        self.services.process(name).kill9()

    def restart(self, name: str) -> None:
        self.services.start([self.specs[name]])
        if name == "ingest":
            wait_until(lambda: port_open("127.0.0.1", self.dicom_port), 60, what="the SCP to listen again")

    def restart_kafka(self, down_s: float = 0.0) -> None:
        self.kafka.stop()
        _sleep(down_s)
        self.kafka.start()

    def restart_postgres(self, down_s: float = 0.0) -> None:
        self.postgres.stop()
        _sleep(down_s)
        self.postgres.start()

    def restart_triton(self, down_s: float = 0.0) -> None:
        self.triton.stop(timeout=60)
        _sleep(down_s)
        self.triton.start()
        self._triton_sane()

    # --- observation ---------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """Top process of every component (radstream processes and the infrastructure)."""
        out = dict(self.services.running())
        kafka = [(f"kafka-{n.node_id}", n.process) for n in self.kafka.nodes] if isinstance(
            self.kafka, KafkaCluster) else [("kafka", self.kafka.process)]
        for name, proc in (*kafka, ("postgres", self.postgres.process),
                           ("triton", self.triton.process)):
            pid = proc.pid()
            if pid is not None:
                out[name] = pid
        return out

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.services.process(name).log_file
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _sleep(seconds: float) -> None:
    if seconds > 0:
        threading.Event().wait(seconds)

"""`radstream dev up|down|status`: the local stack as a whole."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from radstream.devenv.kafka import KafkaCluster, KafkaServer
from radstream.devenv.postgres import PostgresServer
from radstream.devenv.process import port_open
from radstream.devenv.services import Services
from radstream.devenv.triton import DEFAULT_REPOSITORY, TritonServer
from radstream.secrets import triton_access_token
from radstream.settings import Settings


def _host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0]
    host, _, port = first.rpartition(":")
    return (host or "localhost"), int(port)


@dataclass
class ComponentStatus:
    name: str
    address: str
    up: bool
    managed: bool
    pid: int | None
    detail: str = ""


class LocalStack:
    """Kafka, PostgreSQL and Triton under ``settings.home``, started only where the settings point at localhost."""

    def __init__(self, settings: Settings, brokers: int | None = None) -> None:
        """``brokers``: 1 (one combined node) or 3 (a KRaft cluster on the bootstrap port and the next
        ones: brokers on port, port+2, port+4, controllers on the odd ports between); None: what was
        started last (``<home>/kafka/cluster.json`` says a cluster)."""
        home = Path(settings.home)
        host, port = _host_port(settings.kafka.bootstrap_servers)
        self.cluster_file = home / "kafka" / "cluster.json"
        if brokers is None:
            brokers = json.loads(self.cluster_file.read_text())["brokers"] if self.cluster_file.exists() else 1
        self.kafka: KafkaServer | KafkaCluster
        if brokers > 1:
            self.kafka = KafkaCluster(home / "kafka", [port + 2 * i for i in range(brokers)],
                                      [port + 2 * i + 1 for i in range(brokers)], host="127.0.0.1")
            settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={
                "bootstrap_servers": ",".join(f"{host}:{port + 2 * i}" for i in range(brokers)),
                "replication_factor": brokers, "min_insync_replicas": 2})})
        else:
            self.kafka = KafkaServer(home / "kafka", port=port, controller_port=port + 1)
        self.brokers = brokers
        self.settings = settings
        self.kafka_local = host in ("localhost", "127.0.0.1")
        pg = settings.postgres
        self.postgres = PostgresServer(
            home / "postgres", port=pg.port, user=pg.user,
            password=pg.password.get_secret_value(), database=pg.database,
        )
        self.postgres_local = pg.managed and pg.host in ("localhost", "127.0.0.1")
        tr = settings.triton
        self.triton = TritonServer(
            home / "triton", http_port=tr.http_port, grpc_port=tr.grpc_port, metrics_port=tr.metrics_port,
            repository=tr.model_repository or DEFAULT_REPOSITORY, wait_ms=tr.wait_model_ms, device=tr.device,
        )
        self.triton_local = tr.managed and tr.host in ("localhost", "127.0.0.1")
        self.services = Services(settings)

    def up(self, triton: bool = True) -> None:
        if self.postgres_local:
            self.postgres.start()
        if self.kafka_local:
            self.kafka.start()
            if self.brokers > 1:
                self.cluster_file.write_text(json.dumps({"brokers": self.brokers}) + "\n")
            else:
                self.cluster_file.unlink(missing_ok=True)
        if triton and self.triton_local:
            # local clients (same home) find the token of its restricted endpoints (shared memory) there
            self.triton.access_token = triton_access_token(self.settings, create=True)
            self.triton.start()

    def kafka_env(self) -> dict[str, str]:
        """What a radstream process needs to use this Kafka (the cluster's brokers and replication)."""
        k = self.settings.kafka
        return {"RADSTREAM_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
                "RADSTREAM_KAFKA__REPLICATION_FACTOR": str(k.replication_factor),
                "RADSTREAM_KAFKA__MIN_INSYNC_REPLICAS": str(k.min_insync_replicas)}

    def down(self) -> list[str]:
        stopped = self.services.stop_all()
        if self.triton.stop():
            stopped.append("triton")
        if self.kafka.stop():
            stopped.append("kafka")
        if self.postgres.stop():
            stopped.append("postgres")
        return stopped

    def status(self) -> list[ComponentStatus]:
        s = self.settings
        if isinstance(self.kafka, KafkaCluster):
            kafka = [ComponentStatus(f"kafka-{n.node_id}", n.bootstrap, port_open(n.host, n.port), self.kafka_local,
                                     n.process.pid()) for n in self.kafka.nodes]
        else:
            host, port = _host_port(s.kafka.bootstrap_servers)
            kafka = [ComponentStatus("kafka", s.kafka.bootstrap_servers, port_open(host, port), self.kafka_local,
                                     self.kafka.process.pid())]
        return [
            *kafka,
            ComponentStatus("postgres", f"{s.postgres.host}:{s.postgres.port}",
                            port_open(s.postgres.host, s.postgres.port),
                            self.postgres_local, self.postgres.process.pid()),
            ComponentStatus("triton", f"{s.triton.host}:{s.triton.http_port}/{s.triton.grpc_port}",
                            port_open(s.triton.host, s.triton.http_port),
                            self.triton_local, self.triton.process.pid()),
            *(ComponentStatus(name, "", True, True, pid) for name, pid in self.services.running().items()),
        ]

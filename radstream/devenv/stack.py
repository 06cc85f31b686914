"""`radstream dev up|down|status`: the local stack as a whole."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from radstream.devenv.kafka import KafkaServer
from radstream.devenv.postgres import PostgresServer
from radstream.devenv.process import port_open
from radstream.devenv.services import Services
from radstream.devenv.triton import DEFAULT_REPOSITORY, TritonServer
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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        home = Path(settings.home)
        host, port = _host_port(settings.kafka.bootstrap_servers)
        self.kafka = KafkaServer(home / "kafka", port=port, controller_port=port + 1)
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
        if triton and self.triton_local:
            self.triton.start()

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
        host, port = _host_port(s.kafka.bootstrap_servers)
        return [
            ComponentStatus("kafka", s.kafka.bootstrap_servers, port_open(host, port),
                            self.kafka_local, self.kafka.process.pid()),
            ComponentStatus("postgres", f"{s.postgres.host}:{s.postgres.port}",
                            port_open(s.postgres.host, s.postgres.port),
                            self.postgres_local, self.postgres.process.pid()),
            ComponentStatus("triton", f"{s.triton.host}:{s.triton.http_port}/{s.triton.grpc_port}",
                            port_open(s.triton.host, s.triton.http_port),
                            self.triton_local, self.triton.process.pid()),
            *(ComponentStatus(name, "", True, True, pid) for name, pid in self.services.running().items()),
        ]

"""Apache Kafka in KRaft mode from the official jars on Maven Central, run with Java 17."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from radstream.devenv.process import ManagedProcess, port_open, wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = PROJECT_ROOT / "docker" / "kafka" / "pom.xml"
CACHE = PROJECT_ROOT / ".cache" / "kafka"

LOG4J2 = """Configuration:
  Appenders:
    RollingFile:
      name: server
      fileName: {log}
      filePattern: {log}.%i
      PatternLayout: {{ pattern: "[%d] %p %m (%c)%n" }}
      Policies: {{ SizeBasedTriggeringPolicy: {{ size: 50MB }} }}
      DefaultRolloverStrategy: {{ max: 3 }}
  Loggers:
    Root: {{ level: INFO, AppenderRef: [{{ ref: server }}] }}
    Logger:
      - {{ name: kafka.request.logger, level: WARN }}
      - {{ name: org.apache.kafka.controller, level: INFO }}
"""


def java_binary() -> str:
    """Java 17+; prefer JAVA_HOME, then PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise RuntimeError("java not found: install a JDK 17 or newer")
    return found


def ensure_jars() -> Path:
    """Fetch the Kafka jars with Maven into .cache/kafka/libs (once)."""
    libs = CACHE / "libs"
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError("mvn not found: install Maven to fetch the Kafka jars")
    tmp = CACHE / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={tmp}", f"-Dmaven.repo.local={CACHE / 'm2'}"],
        check=True,
    )
    tmp.rename(libs)
    return libs


@dataclass
class KafkaServer:
    """One combined broker/controller with its data and logs in ``home``."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    heap: str = "512m"
    overrides: dict[str, str] = field(default_factory=dict)  # server.properties set over the defaults below

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("kafka", self.home / "kafka.pid", self.home / "kafka.stdout.log")

    def _write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str((self.home / "data").resolve()),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": "4194304",
            **self.overrides,
        }
        conf = self.home / "server.properties"
        conf.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j2.yaml").write_text(LOG4J2.format(log=(self.home / "server.log").resolve()))
        return conf

    def _classpath(self, libs: Path) -> str:
        return str(libs / "*")

    def start(self, timeout: float = 90.0) -> None:
        if self.process.running() and port_open(self.host, self.port):
            return
        libs = ensure_jars()
        conf = self._write_config()
        java = java_binary()
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = str(uuid.uuid4().hex[:22])
            subprocess.run(
                [java, "-cp", self._classpath(libs), "kafka.tools.StorageTool", "format",
                 "-t", cluster_id, "-c", str(conf), "--ignore-formatted"],
                check=True, capture_output=True,
            )
        argv = [
            java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={(self.home / 'log4j2.yaml').resolve()}",
            "-cp", self._classpath(libs), "kafka.Kafka", str(conf),
        ]
        self.process.start(argv)
        wait_until(self.ready, timeout, interval=0.3, what=f"Kafka on {self.bootstrap}")

    def ready(self) -> bool:
        if not self.process.running():
            raise RuntimeError(f"Kafka exited; see {self.home / 'server.log'} and {self.process.log_file}")
        if not port_open(self.host, self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except Exception:
            return False
        return len(md.brokers) > 0

    def stop(self) -> bool:
        return self.process.stop(timeout=60)

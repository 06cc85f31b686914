"""Apache Kafka in KRaft mode from the official jars on Maven Central, run with Java 17."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """One combined broker/controller with its data and logs in ``home`` (alone, or a node of a
    :class:`KafkaCluster`: then ``voters`` names the whole controller quorum)."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    heap: str = "512m"
    overrides: dict[str, str] = field(default_factory=dict)  # server.properties set over the defaults below
    node_id: int = 1
    voters: str | None = None  # controller.quorum.voters; default: this node alone
    cluster_id: str | None = None  # the same for every node of a cluster
    replication: int = 1  # of the internal topics (offsets, transactions) and the default for new topics

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("kafka", self.home / "kafka.pid", self.home / "kafka.stdout.log")

    def _write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        rf = str(self.replication)
        min_isr = "2" if self.replication >= 3 else "1"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str((self.home / "data").resolve()),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            # a replica that was out of sync never becomes leader: acknowledged writes are not lost
            "unclean.leader.election.enable": "false",
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
        if self.launch():
            wait_until(self.ready, timeout, interval=0.3, what=f"Kafka on {self.bootstrap}")

    def launch(self) -> bool:
        """Start the process without waiting (a cluster node needs its quorum to come up); False if up."""
        if self.process.running() and port_open(self.host, self.port):
            return False
        libs = ensure_jars()
        conf = self._write_config()
        java = java_binary()
        if not (self.home / "data" / "meta.properties").exists():
            cluster_id = self.cluster_id or str(uuid.uuid4().hex[:22])
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
        return True

    def ready(self) -> bool:
        if not self.process.running():
            raise RuntimeError(f"Kafka exited; see {self.home / 'server.log'} and {self.process.log_file}")
        if not port_open(self.host, self.port):
            return False

        try:
            md = _probe(self.bootstrap).list_topics(timeout=2)
        except Exception:
            return False
        return len(md.brokers) > 0

    def stop(self) -> bool:
        return self.process.stop(timeout=60)


def _probe(bootstrap: str) -> Any:
    """An admin client for health probes: a node that is down is expected, so its connection errors
    are not logged (librdkafka log level 2 = critical)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})


def kraft_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 characters)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaCluster:
    """Three (or ``size``) combined broker/controller nodes on one machine, one KRaft quorum.

    Node *i* (1-based) listens on ``ports[i-1]`` and its controller on ``controller_ports[i-1]``,
    keeps its data under ``home/node-<i>``, and replicates the internal topics ``size`` times with
    min ISR 2 (from 3 nodes) and unclean leader election off. Three combined nodes are what the
    Kafka documentation allows for a small cluster; a large one separates the controllers.
    """

    home: Path
    ports: list[int]
    controller_ports: list[int]
    host: str = "127.0.0.1"
    heap: str = "512m"
    nodes: list[KafkaServer] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.ports) != len(self.controller_ports) or not self.ports:
            raise ValueError("one broker port and one controller port per node")
        voters = ",".join(f"{i + 1}@{self.host}:{c}" for i, c in enumerate(self.controller_ports))
        id_file = self.home / "cluster.id"
        if id_file.exists():
            cluster_id = id_file.read_text().strip()
        else:
            self.home.mkdir(parents=True, exist_ok=True)
            cluster_id = kraft_cluster_id()
            id_file.write_text(cluster_id + "\n")
        self.nodes = [
            KafkaServer(self.home / f"node-{i + 1}", port=p, controller_port=c, host=self.host, heap=self.heap,
                        node_id=i + 1, voters=voters, cluster_id=cluster_id, replication=len(self.ports))
            for i, (p, c) in enumerate(zip(self.ports, self.controller_ports, strict=True))
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def start(self, timeout: float = 120.0) -> None:
        for n in self.nodes:
            n.launch()
        wait_until(self.ready, timeout, interval=0.5, what=f"a {len(self.nodes)}-broker Kafka cluster")

    def ready(self) -> bool:
        """Every node up and registered as a broker."""
        return all(n.ready() for n in self.nodes) and len(self._brokers()) == len(self.nodes)

    def _brokers(self) -> set[int]:

        try:
            md = _probe(self.bootstrap).list_topics(timeout=3)
        except Exception:
            return set()
        return set(md.brokers)

    def stop(self) -> bool:
        return any([n.stop() for n in self.nodes])

    def node(self, node_id: int) -> KafkaServer:
        return self.nodes[node_id - 1]

    def kill9(self, node_id: int) -> None:
        """SIGKILL one node (no controlled shutdown: its partitions lose their leader abruptly)."""
        self.node(node_id).process.kill9()

    def start_node(self, node_id: int, timeout: float = 90.0) -> None:
        """Start one stopped node and wait until the cluster counts it as a broker again."""
        self.node(node_id).launch()
        wait_until(lambda: node_id in self._brokers() and self.node(node_id).ready(), timeout, interval=0.5,
                   what=f"Kafka node {node_id} back in the cluster")

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> the node id leading it now (-1: no leader)."""

        md = _probe(self.bootstrap).list_topics(topic=topic, timeout=10)
        t = md.topics[topic]
        return {p: meta.leader for p, meta in t.partitions.items()}

    def in_sync(self, topic: str) -> bool:
        """Every partition of ``topic`` has all its replicas in sync."""

        md = _probe(self.bootstrap).list_topics(topic=topic, timeout=10)
        return all(len(p.isrs) == len(p.replicas) for p in md.topics[topic].partitions.values())

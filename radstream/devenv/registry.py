"""A Confluent-compatible schema registry (Apicurio Registry) built from Maven Central, no Docker.

``docker/registry/pom.xml`` assembles Apicurio Registry's Quarkus app (in-memory H2 storage)
into a runnable jar under ``.cache/registry/app``; the Confluent API is served at
``/apis/ccompat/v7``. Point ``kafka.schema_registry_url`` at :attr:`SchemaRegistryServer.url`
to use the Confluent wire format.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from radstream.devenv.kafka import java_binary
from radstream.devenv.process import ManagedProcess, wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = PROJECT_ROOT / "docker" / "registry" / "pom.xml"
MAVEN_SETTINGS = PROJECT_ROOT / "docker" / "registry" / "settings.xml"
CACHE = PROJECT_ROOT / ".cache" / "registry"
RUNNER = "radstream-local-registry-1-runner.jar"
CCOMPAT_PATH = "/apis/ccompat/v7"


def ensure_jars() -> Path:
    """Build the registry with Maven into .cache/registry/app (once); returns the runner jar."""
    app = CACHE / "app"
    if (app / RUNNER).is_file() and (app / "lib").is_dir():
        return app / RUNNER
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError("mvn not found: install Maven to build the schema registry")
    tmp = CACHE / "app.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [mvn, "-q", "-B", "-s", str(MAVEN_SETTINGS), "-f", str(POM), "package",
         f"-Dregistry.out={tmp}", f"-Dmaven.repo.local={CACHE / 'm2'}"],
        check=True,
    )
    shutil.rmtree(app, ignore_errors=True)
    tmp.rename(app)
    return app / RUNNER


@dataclass
class SchemaRegistryServer:
    """One Apicurio Registry with in-memory storage; pid file and log in ``home``."""

    home: Path
    port: int = 8081
    host: str = "127.0.0.1"
    heap: str = "384m"

    @property
    def url(self) -> str:
        """The Confluent-compatible base URL (for ``kafka.schema_registry_url``)."""
        return f"http://{self.host}:{self.port}{CCOMPAT_PATH}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("registry", self.home / "registry.pid", self.home / "registry.log")

    def start(self, timeout: float = 120.0) -> None:
        if self.process.running() and self._answers():
            return
        runner = ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [
            java_binary(), f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
            f"-Dquarkus.http.host={self.host}", f"-Dquarkus.http.port={self.port}",
            f"-Djava.io.tmpdir={self.home}",
            "-jar", str(runner),
        ]
        self.process.start(argv, cwd=self.home)
        wait_until(self.ready, timeout, interval=0.3, what=f"schema registry on {self.url}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def ready(self) -> bool:
        if not self.process.running():
            raise RuntimeError(f"schema registry exited; see {self.process.log_file}")
        return self._answers()

    def stop(self) -> bool:
        return self.process.stop(timeout=30)

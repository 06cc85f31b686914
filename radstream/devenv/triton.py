"""The real Triton Inference Server on the CPU (nvidia-pytriton) serving the reference models."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from radstream.devenv.process import ManagedProcess, port_open, wait_until
from radstream.models.serve import TOKEN_ENV, libpython_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = PROJECT_ROOT / "docker" / "triton"


@dataclass
class TritonServer:
    """``python -m radstream.models.serve`` as a managed background process (pid file in ``home``)."""

    home: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    repository: Path = DEFAULT_REPOSITORY
    wait_ms: float = 50.0
    wait_instances: int = 4  # instances of the wait_ref model
    extra_env: dict[str, str] = field(default_factory=dict)
    model_version: int | None = None  # serve the reference models as this version (None: their own)
    device: str = "cpu"  # where the reference models compute: cpu (onnxruntime) or cuda (PyTorch)
    access_token: str | None = None  # of the restricted endpoints (shared memory); None: a random one

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("triton", self.home / "triton.pid", self.home / "triton.log")

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "radstream.models.serve",
            "--repository", str(self.repository), "--host", self.host,
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--wait-ms", str(self.wait_ms),
            "--wait-instances", str(self.wait_instances),
            "--workspace", str(self.home / "workspace"),
            *(["--model-version", str(self.model_version)] if self.model_version else []),
            "--device", self.device,
        ]

    def start(self, timeout: float = 180.0) -> None:
        if self.process.running() and self.ready():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        # LD_LIBRARY_PATH must name this interpreter's libpython before the server starts
        token = {TOKEN_ENV: self.access_token} if self.access_token else {}
        self.process.start(self.argv(), env={**libpython_env(), **token, **self.extra_env}, cwd=PROJECT_ROOT)
        wait_until(self._ready_or_dead, timeout, interval=0.5, what=f"Triton on {self.http_url}")

    def _ready_or_dead(self) -> bool:
        if not self.process.running():
            raise RuntimeError(f"Triton exited; see {self.process.log_file}")
        return self.ready()

    def ready(self) -> bool:
        if not port_open(self.host, self.http_port):
            return False
        import httpx

        from radstream.models.specs import REFERENCE_MODELS, WAIT_MODEL

        base = f"http://{self.http_url}/v2"
        try:
            with httpx.Client(timeout=2) as client:
                if client.get(f"{base}/health/ready").status_code != 200:
                    return False
                # the server answers ready before pytriton has loaded the models: ask for each
                names = [m.name for m in REFERENCE_MODELS] + [WAIT_MODEL]
                return all(client.get(f"{base}/models/{n}/ready").status_code == 200 for n in names)
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the server and wait until its ports are free again (the tritonserver child exits last)."""
        stopped = self.process.stop(timeout=timeout)
        if stopped:
            wait_until(lambda: not (port_open(self.host, self.http_port) or port_open(self.host, self.grpc_port)),
                       timeout, interval=0.3, what="Triton's ports to close")
        return stopped

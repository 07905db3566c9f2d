"""Run NVIDIA Triton from the `nvidia-pytriton` wheel over a generated model repository.

Tests and benches use this; production runs the official `tritonserver` image over the
repository `talkinghead triton-repo` writes. The wheel's server binary (python backend only)
needs a private copy of the server tree with the stub for the running Python, libpython on
the library path, and the venv's `bin` first on PATH so the stub imports this environment's
packages (docs/serving.md).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from services.embedded import free_port
from services.renderer.triton_repo import write_repository
from talkinghead.families.registry import family_names


class TritonUnavailable(RuntimeError):
    """The wheel's server is not installed or did not become ready."""


def _server_tree() -> Path:
    try:
        import pytriton
    except ImportError:
        raise TritonUnavailable(
            "nvidia-pytriton is not installed (pip install nvidia-pytriton)"
        ) from None
    tree = Path(pytriton.__file__).parent / "tritonserver"
    if not (tree / "bin" / "tritonserver").is_file():
        raise TritonUnavailable(f"no tritonserver binary under {tree}")
    return tree


class TritonServer:
    """A tritonserver process on free ports; a context manager that stops it on exit."""

    def __init__(
        self,
        models: tuple[str, ...] | None = None,
        env: dict[str, str] | None = None,
        repository: Path | None = None,
        startup_s: float = 120.0,
    ) -> None:
        self.models = tuple(family_names() if models is None else models)
        self.env = env or {}
        self.repository = repository
        self.startup_s = startup_s
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.workspace: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._generated = False  # the repository lives in the workspace: remade by a restart

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint (tritonclient's form)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics of the server and its models."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> TritonServer:
        """Copy the server tree, start it, and wait until every model is ready."""
        tree = _server_tree()
        self.workspace = Path(tempfile.mkdtemp(prefix="th-triton-"))
        server = self.workspace / "tritonserver"
        shutil.copytree(tree, server, symlinks=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy2(stub, server / "backends" / "python" / "triton_python_backend_stub")
        if self.repository is None or self._generated:  # from the registry, as in the images
            self.repository = self.workspace / "models"
            write_repository(self.repository, self.models)
            self._generated = True
        libs = [
            str(sysconfig.get_config_var("LIBDIR")),
            str(tree.parent.parent / "nvidia_pytriton.libs"),
        ]
        env = {
            **os.environ,
            **self.env,
            "LD_LIBRARY_PATH": ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        cmd = [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={server / 'backends'}",
            "--allow-gpu-metrics=false",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--log-verbose=0",
        ]
        self.log_path = self.workspace / "server.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Block until /v2/health/ready answers 200; TritonUnavailable if the server dies."""
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited: {self.log_tail()}")
            try:
                if (
                    httpx.get(f"http://{self.http_url}/v2/health/ready", timeout=2).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TritonUnavailable(
            f"tritonserver not ready after {self.startup_s} s: {self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; drops the workspace (start() reuses the ports)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

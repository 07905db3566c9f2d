"""The `talkinghead` command: admin verbs on a temp SQLite database, client verbs on a real API."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.client import ApiError, TalkingHeadClient
from services.embedded import RedisServer, free_port, tail
from shared.config import Settings
from shared.db.migrate import upgrade
from shared.db.session import session_scope
from shared.tenants import authenticate, create_tenant

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
# The first bytes of an ISO-BMFF (mp4) file: enough for the API's magic-byte check.
FAKE_MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 4096


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TH_* setting of the developer's shell (a real database URL!) reaches these tests."""
    for name in list(os.environ):
        if name.startswith("TH_"):
            monkeypatch.delenv(name)


def _db_url(data_dir: Path) -> str:
    return Settings(data_dir=data_dir).database_url


# -- admin verbs ------------------------------------------------------------------------------


def test_tenant_create_prints_a_key_that_authenticates(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["admin", "tenant", "create", "acme"], env={"TH_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 0, result.output
    tenant_id = re.search(r"\b(tn_[0-9a-f]+)\b", result.stdout)
    key = re.search(r"api key\s+(\S+)", result.stdout)
    secret = re.search(r"webhook secret\s+([0-9a-f]{64})", result.stdout)
    assert tenant_id and key and secret, result.stdout
    with session_scope(_db_url(tmp_path)) as session:
        row = authenticate(session, key.group(1))
        assert row is not None
        assert row.tenant_id == tenant_id.group(1)


def test_tenant_create_json_and_duplicate_name(tmp_path: Path) -> None:
    env = {"TH_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["admin", "tenant", "create", "globex", "--json"], env=env)
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert set(created) >= {"tenant_id", "api_key", "api_key_id", "webhook_secret"}
    assert created["name"] == "globex"
    with session_scope(_db_url(tmp_path)) as session:
        row = authenticate(session, created["api_key"])
        assert row is not None and row.id == created["api_key_id"]

    again = runner.invoke(app, ["admin", "tenant", "create", "globex"], env=env)
    assert again.exit_code == 1
    assert "error tenant_exists" in again.stderr


def test_admin_key_create(tmp_path: Path) -> None:
    env = {"TH_DATA_DIR": str(tmp_path)}
    tenant = json.loads(
        runner.invoke(app, ["admin", "tenant", "create", "initech", "--json"], env=env).stdout
    )
    result = runner.invoke(app, ["admin", "key", "create", tenant["tenant_id"], "--json"], env=env)
    assert result.exit_code == 0, result.output
    issued = json.loads(result.stdout)
    assert issued["api_key"] != tenant["api_key"]
    with session_scope(_db_url(tmp_path)) as session:
        row = authenticate(session, issued["api_key"])
        assert row is not None and row.tenant_id == tenant["tenant_id"]

    missing = runner.invoke(app, ["admin", "key", "create", "tn_nope"], env=env)
    assert missing.exit_code == 1
    assert "error tenant_not_found" in missing.stderr


def test_invalid_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {"TH_DATA_DIR": str(tmp_path), "TH_API_PORT": "notanumber"}
    for argv in (["admin", "tenant", "create", "x"], ["migrate"]):
        result = runner.invoke(app, argv, env=env)
        assert result.exit_code == 2, result.output
        assert "TH_API_PORT" in result.stderr
        assert "Traceback" not in result.output


def test_migrate(tmp_path: Path) -> None:
    result = runner.invoke(app, ["migrate"], env={"TH_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stdout
    assert (tmp_path / "talkinghead.db").exists()


def test_client_verbs_need_a_key_and_valid_json(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(FAKE_MP4)
    no_key = runner.invoke(app, ["avatar", "list"], env={"TH_API_KEY": ""})
    assert no_key.exit_code == 2
    assert "TH_API_KEY" in no_key.stderr
    bad = runner.invoke(
        app, ["avatar", "create", str(video), "--consent", "--metadata", "{nope", "--api-key", "k"]
    )
    assert bad.exit_code == 2
    no_consent = runner.invoke(app, ["avatar", "create", str(video), "--api-key", "k"])
    assert no_consent.exit_code == 2
    assert "--consent" in no_consent.output


def test_unreachable_api_is_an_error_not_a_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["avatar", "get", "av_x", "--api-url", url, "--api-key", "k"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error unreachable:")


# -- client verbs against a real API process --------------------------------------------------


@dataclass
class LiveApi:
    url: str
    key: str
    data_dir: Path


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """`uvicorn services.api.app:create_app` on a free port over a temp data dir and Redis."""
    if importlib.util.find_spec("services.api.app") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("services.api.app is missing")
        pytest.skip("services.api.app is not written yet")
    data_dir = tmp_path_factory.mktemp("api")
    redis = RedisServer(data_dir / "redis").start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TH_", "PROMETHEUS_"))}
    env.update(
        TH_DATA_DIR=str(data_dir),
        TH_REDIS_URL=redis.url,
        TH_API_PORT=str(port),
        PYTHONPATH=str(ROOT),
    )
    settings = Settings(data_dir=data_dir)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        _, key = create_tenant(session, "cli-tests")
    log = data_dir / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "services.api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"API exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"API not up:\n{tail(log)}"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield LiveApi(url, key, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        redis.stop()


def _cli(api: LiveApi, *argv: str, key: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, [*argv, "--api-url", api.url, "--api-key", key or api.key])
    return result.exit_code, result.stdout, result.stderr


def test_key_verbs(live_api: LiveApi) -> None:
    code, out, err = _cli(live_api, "key", "create", "--name", "ci", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["key"].startswith("th_") and created["name"] == "ci"

    code, out, err = _cli(live_api, "key", "list", "--json")
    assert code == 0, err
    listed = {k["id"]: k for k in json.loads(out)}
    assert created["id"] in listed
    assert all("key" not in k for k in listed.values())  # secrets are never listed

    code, out, err = _cli(live_api, "key", "list")
    assert code == 0 and created["id"] in out

    code, _, err = _cli(live_api, "avatar", "list", key=created["key"])
    assert code == 0, err
    code, out, err = _cli(live_api, "key", "revoke", created["id"])
    assert code == 0, err
    code, _, err = _cli(live_api, "avatar", "list", key=created["key"])
    assert code == 1
    assert re.match(r"error [a-z_]+: ", err), err


def test_avatar_verbs(live_api: LiveApi, tmp_path: Path) -> None:
    video = tmp_path / "portrait.mp4"
    video.write_bytes(FAKE_MP4)
    code, out, err = _cli(
        live_api, "avatar", "create", str(video), "--consent", "--name", "ada",
        "--metadata", '{"order": 7}', "--no-wait",
    )  # fmt: skip
    assert code == 0, err
    avatar = json.loads(out)
    assert avatar["name"] == "ada" and avatar["metadata"] == {"order": 7}
    assert avatar["consent"] is True

    code, out, err = _cli(live_api, "avatar", "get", avatar["id"])
    assert code == 0, err
    assert json.loads(out)["id"] == avatar["id"]

    code, out, err = _cli(live_api, "avatar", "create", str(video), "--consent", "--no-wait")
    assert code == 0, err
    second = json.loads(out)

    # A page size of 1 makes the client follow `next_cursor` to the end.
    code, out, err = _cli(live_api, "avatar", "list", "--json", "--limit", "1")
    assert code == 0, err
    listed = [a["id"] for a in json.loads(out)]
    assert {avatar["id"], second["id"]} <= set(listed)
    assert len(listed) == len(set(listed))

    code, out, err = _cli(live_api, "avatar", "delete", avatar["id"])
    assert code == 0, err
    code, _, err = _cli(live_api, "avatar", "get", avatar["id"])
    assert code == 1
    assert err.startswith("error not_found")


def test_render_needs_a_ready_avatar(live_api: LiveApi, tmp_path: Path) -> None:
    video = tmp_path / "portrait.mp4"
    video.write_bytes(FAKE_MP4)
    audio = tmp_path / "speech.wav"
    audio.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64)
    code, out, err = _cli(live_api, "avatar", "create", str(video), "--consent", "--no-wait")
    assert code == 0, err
    avatar_id = json.loads(out)["id"]
    code, _, err = _cli(
        live_api, "render", avatar_id, str(audio), "--background", "#00ff00", "--no-wait"
    )
    assert code == 1
    assert re.search(r"^error [a-z_]+: .+", err, re.MULTILINE), err
    assert "409" not in err  # a stable code, not a bare status
    with TalkingHeadClient(live_api.url, live_api.key) as client:
        with pytest.raises(ApiError) as info:
            client.create_render(avatar_id, audio)
        assert info.value.status == 409
        with pytest.raises(ApiError) as missing:
            client.download_video("rn_missing", tmp_path / "out.mp4")
        assert missing.value.status == 404
        assert not (tmp_path / "out.mp4").exists()
        assert not (tmp_path / "out.mp4.part").exists()


def test_api_errors_print_code_and_detail(live_api: LiveApi, tmp_path: Path) -> None:
    not_media = tmp_path / "notes.mp4"
    not_media.write_bytes(b"hello, this is text and no video container" * 20)
    code, _, err = _cli(live_api, "avatar", "create", str(not_media), "--consent", "--no-wait")
    assert code == 1
    assert re.search(r"^error unsupported_media_type: .+", err, re.MULTILINE), err
    code, _, err = _cli(live_api, "avatar", "list", key="th_not-a-key")
    assert code == 1
    assert re.match(r"error [a-z_]+: ", err), err


def test_avatar_create_sends_a_photo_as_the_image_source(live_api: LiveApi, tmp_path: Path) -> None:
    import cv2
    from skimage import data as skdata

    photo = tmp_path / "me.jpg"
    cv2.imwrite(str(photo), skdata.astronaut()[:, :, ::-1])
    # The built-in families take videos: the API names the source and what the family takes.
    code, _, err = _cli(live_api, "avatar", "create", str(photo), "--consent", "--no-wait")
    assert code == 1
    assert re.search(r"^error unsupported_source: .*video", err, re.MULTILINE), err
    code, _, err = _cli(
        live_api, "avatar", "create", str(photo), "--consent", "--source", "gif", "--no-wait"
    )
    assert code == 2 and "video or image" in err

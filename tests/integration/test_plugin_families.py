"""Families from an operator's own package, through the whole system, no project file edited.

The package (tests/fixtures/plugin_families) is copied into a temp dir with a dist-info that
declares its two families in the `talkinghead.families` entry-point group, and put on the
path of this process, the API, the Celery workers and Triton's python stub. Each family's
renderer draws every input value as a grey block, so the decoded mp4 shows what arrived.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from services.tritonserver import TritonServer
from shared.db.session import session_scope
from shared.exports import download_export
from shared.storage import LocalObjectStore
from shared.tenants import create_tenant
from talkinghead.export.artifact import read_manifest
from talkinghead.families import registry
from talkinghead.families.contract import RenderControls, RendererFamily, frames_for
from talkinghead.media import load_speech
from talkinghead.synthetic import speech
from tests.conftest import make_face_video

pytestmark = pytest.mark.timeout(600)

PACKAGE = Path(__file__).resolve().parent.parent / "fixtures" / "plugin_families"
ENTRY_POINTS = """[talkinghead.families]
plugvideo = th_plugin_demo.families:VIDEO_FAMILY
plugphoto = th_plugin_demo.families:PHOTO_FAMILY
"""
BLOCK = 16
TOLERANCE = 6  # grey levels: H.264 at CRF 16 on flat 16 px blocks


def install_plugin(root: Path) -> Path:
    """The package and its dist-info (entry points) in `root`, as pip would leave them."""
    shutil.copytree(PACKAGE / "th_plugin_demo", root / "th_plugin_demo")
    dist = root / "th_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: th-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


@dataclass
class Platform:
    """The shared state of the module: plugin path, data dir, ready avatars and their renders."""

    root: Path
    plugin: Path
    data_dir: Path
    avatars: dict[str, dict[str, Any]]
    speech: Path
    videos: dict[tuple[str, str], Path]  # (family, backend) -> downloaded mp4


def render_all(
    client: TalkingHeadClient, avatars: dict[str, dict[str, Any]], speech_wav: Path, out: Path
) -> dict[str, Path]:
    """One render job per avatar through the stack's backend; the downloaded mp4s."""
    renders = {n: client.create_render(a["id"], speech_wav) for n, a in avatars.items()}
    videos = {}
    for name, render in renders.items():
        done = client.wait("render", render["id"], timeout=180)
        assert done["status"] == "done", (name, done)
        videos[name] = client.download_video(render["id"], out / f"{name}.mp4")
    return videos


@pytest.fixture(scope="module")
def platform(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("plugins")
    plugin = install_plugin(root / "site")
    sys.path.insert(0, str(plugin))
    registry.reload()
    speech(root / "speech.wav", "plugins render exactly what they are given", "en", 2.0)
    data_dir = root / "state"
    base_env = {"PYTHONPATH": str(plugin), "TH_RECONCILE_INTERVAL_S": "1", "TH_LOG_JSON": "false"}
    videos: dict[tuple[str, str], Path] = {}
    try:
        # Build both avatars and render them in-process (the embedded default).
        with EmbeddedStack(data_dir, redis_url=redis_url, env=base_env, concurrency=1) as stack:
            with session_scope(stack.settings.database_url) as s:
                _, key = create_tenant(s, "plugins")
            client = TalkingHeadClient(stack.base_url, key)
            video = make_face_video(root / "face.mp4")
            photo = root / "face.png"
            cv2.imwrite(str(photo), skdata.astronaut()[:, :, ::-1])
            created = {
                "plugvideo": client.create_avatar(video, consent=True, renderer="plugvideo"),
                "plugphoto": client.create_avatar(photo, consent=True, renderer="plugphoto"),
            }
            avatars = {n: client.wait("avatar", a["id"], timeout=240) for n, a in created.items()}
            for name, avatar in avatars.items():
                assert avatar["status"] == "ready", (name, avatar, stack.logs_dir)
            out = root / "inprocess"
            for name, path in render_all(client, avatars, root / "speech.wav", out).items():
                videos[name, "inprocess"] = path
        # The same avatars rendered again by workers that call the real tritonserver.
        triton_env = {
            "TH_STORAGE_DIR": str(data_dir / "objects"), "TH_DATA_DIR": str(data_dir),
            "PYTHONPATH": str(plugin), "TH_TORCH_THREADS": "1",
        }  # fmt: skip
        with TritonServer(models=tuple(avatars), env=triton_env) as triton:
            env = {**base_env, "TH_RENDER_BACKEND": "triton", "TH_TRITON_URL": triton.http_url}
            with EmbeddedStack(data_dir, redis_url=redis_url, env=env, concurrency=1) as stack:
                client = TalkingHeadClient(stack.base_url, key)
                out = root / "triton"
                for name, path in render_all(client, avatars, root / "speech.wav", out).items():
                    videos[name, "triton"] = path
        yield Platform(root, plugin, data_dir, avatars, root / "speech.wav", videos)
    finally:
        sys.path.remove(str(plugin))
        registry.reload()


def expected_inputs(
    platform: Platform, family: RendererFamily, avatar_id: str
) -> tuple[dict[str, np.ndarray], int]:
    """What the family's conditions give for the test speech: name -> (frames, *shape)."""
    store = LocalObjectStore(platform.data_dir / "objects")
    export = platform.root / f"export-{avatar_id}"
    download_export(store, avatar_id, export)
    manifest = read_manifest(export)
    wave = load_speech(platform.speech, platform.root / "speech16k.wav", 60.0).wave
    n = frames_for(len(wave))
    batches = list(family.conditions(export, manifest, wave, RenderControls(frames=n, batch=5)))
    names = [spec.name for spec in family.inputs]
    return {k: np.concatenate([b[k] for b in batches]) for k in names}, n


def decoded_values(video: Path, values: int, columns: int) -> np.ndarray:
    """(frames, values): the grey level at the centre of each block of each frame, in [0, 1]."""
    out = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24").astype(np.float64)
            row = []
            for k in range(values):
                y, x = (k // columns) * BLOCK, (k % columns) * BLOCK
                row.append(rgb[y + 4 : y + 12, x + 4 : x + 12].mean() / 255.0)
            out.append(row)
    return np.array(out)


LAYOUTS = {"plugvideo": (["landmarks", "level"], 9, 3), "plugphoto": (["phase", "mouth"], 4, 2)}


@pytest.mark.parametrize("backend", ["inprocess", "triton"])
@pytest.mark.parametrize("name", ["plugvideo", "plugphoto"])
def test_every_named_input_reaches_the_frames(platform: Platform, name: str, backend: str) -> None:
    family = registry.get_family(name)
    avatar_id = platform.avatars[name]["id"]
    expected, n = expected_inputs(platform, family, avatar_id)
    order, values, columns = LAYOUTS[name]
    flat = np.concatenate([expected[k].reshape(n, -1) for k in order], axis=1)
    assert flat.shape == (n, values)
    assert flat.std(axis=0).min() > 0.01, "every input varies over the speech"
    video = platform.videos[name, backend]
    got = decoded_values(video, values, columns)
    assert len(got) == n
    worst = np.abs(got - flat).max() * 255
    assert worst <= TOLERANCE, f"{name} via {backend}: a block is {worst:.1f} grey levels off"


def test_a_family_that_ignores_its_inputs_would_fail(platform: Platform) -> None:
    """The check above is not vacuous: a constant frame is far from the expected blocks."""
    family = registry.get_family("plugvideo")
    expected, n = expected_inputs(platform, family, platform.avatars["plugvideo"]["id"])
    flat = np.concatenate([expected["landmarks"].reshape(n, -1), expected["level"][:, None]], 1)
    constant = np.broadcast_to(flat[0], flat.shape)
    assert np.abs(constant - flat).max() * 255 > 4 * TOLERANCE


def test_the_families_report_their_own_stages_and_metrics(platform: Platform) -> None:
    video, photo = platform.avatars["plugvideo"], platform.avatars["plugphoto"]
    assert video["metrics"]["training"]["steps"] == 40
    assert len(video["metrics"]["colour"]) == 3
    assert "training" not in photo["metrics"]
    assert photo["metrics"]["thumbnail_px"] == 32
    assert photo["source"] == "image" and video["source"] == "video"


def test_triton_repository_is_generated_for_plugin_families(
    platform: Platform, tmp_path: Path
) -> None:
    from services.renderer.triton_repo import write_repository

    names = write_repository(tmp_path / "models")
    assert {"plugvideo", "plugphoto"} <= set(names)
    config = (tmp_path / "models" / "plugvideo" / "config.pbtxt").read_text()
    assert 'name: "LANDMARKS", data_type: TYPE_FP32, dims: [ 4, 2 ]' in config
    assert 'name: "LEVEL", data_type: TYPE_FP32, dims: [ 1 ]' in config

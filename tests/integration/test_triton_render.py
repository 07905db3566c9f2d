"""Render jobs through a real Triton server (the nvidia-pytriton wheel's `tritonserver`).

One `radnerf` avatar is made through the HTTP API (`cpu-quick` on a 30 s synthetic clip,
about 3 minutes on 2 cores). The render worker talks to Triton through `tritonclient`; the
test compares what Triton returns with the in-process backend, and the delivered mp4 with
the avatar's held-out ground truth.
"""

from __future__ import annotations

import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import select

from services.client import TalkingHeadClient
from services.embedded import EmbeddedStack
from services.renderer.avatars import AvatarCache
from services.renderer.backends import InProcessBackend, TritonBackend
from services.tritonserver import TritonServer
from shared.db.models import Artifact
from shared.db.session import session_scope
from shared.exports import export_prefix, upload_export
from shared.storage import LocalObjectStore
from shared.tenants import create_tenant
from talkinghead.data.frames import TrainingData
from talkinghead.export.artifact import ExportedAvatar
from talkinghead.families.radnerf.driving import assets_of, speech_features
from talkinghead.families.radnerf.export import assets_from_arrays, export_avatar
from talkinghead.metrics import FaceMeter, lipsync_proxy, psnr_from_mse
from talkinghead.rendering.controls import FrameBatch, frame_batches
from talkinghead.synthetic import generate
from tests.fixtures.avatars import TrainedAvatar

pytestmark = pytest.mark.timeout(1800)


@dataclass
class Served:
    """The stack, its Triton server and one ready radnerf avatar."""

    stack: EmbeddedStack
    triton: TritonServer
    client: TalkingHeadClient
    avatar: dict[str, Any]
    store: LocalObjectStore
    data: TrainingData


def named(batch: FrameBatch) -> dict[str, np.ndarray]:
    """A RAD-NeRF frame batch as the renderer's named inputs."""
    return {"pose": batch.poses, "audio": batch.audio, "eye": batch.eyes}


def _artifact(stack: EmbeddedStack, resource_id: str, kind: str) -> str:
    with session_scope(stack.settings.database_url) as s:
        key = s.scalar(
            select(Artifact.key).where(Artifact.resource_id == resource_id, Artifact.kind == kind)
        )
    assert key is not None, f"no {kind} artifact"
    return str(key)


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("triton-render")
    data_dir = root / "state"
    objects = data_dir / "objects"
    objects.mkdir(parents=True)
    # Triton reads exports from the same store the workers write (a local directory here,
    # S3 in production); one intra-op thread each so the processes share the 2 cores.
    triton_env = {"TH_STORAGE_DIR": str(objects), "TH_DATA_DIR": str(data_dir)}
    with TritonServer(env={**triton_env, "TH_TORCH_THREADS": "1"}) as triton:
        env = {
            "TH_RECONCILE_INTERVAL_S": "1",
            "TH_LOG_JSON": "false",
            "TH_RENDER_BACKEND": "triton",
            "TH_TRITON_URL": triton.http_url,
        }
        with EmbeddedStack(data_dir, redis_url=redis_url, env=env, concurrency=1) as stack:
            with session_scope(stack.settings.database_url) as s:
                _, key = create_tenant(s, "triton-tests")
            client = TalkingHeadClient(stack.base_url, key)
            clip = generate(root / "clip", seconds=30, size=256, seed=5)
            created = client.create_avatar(
                clip.video, consent=True, renderer="radnerf", preset="cpu-quick"
            )
            avatar = client.wait("avatar", created["id"], timeout=1500)
            assert avatar["status"] == "ready", (avatar, stack.logs_dir)
            store = LocalObjectStore(objects)
            archive = root / "dataset.tar"
            store.download(_artifact(stack, avatar["id"], "dataset"), archive)
            with tarfile.open(archive) as tar:
                tar.extractall(root / "data", filter="data")
            data = TrainingData(root / "data" / "dataset", 128)
            yield Served(stack, triton, client, avatar, store, data)


@dataclass
class HeldOut:
    """A render request reproducing the held-out frames: their audio, poses and eyes."""

    ids: list[int]
    audio: Path
    options: dict[str, Any]


def held_out_request(served: Served, tmp: Path) -> HeldOut:
    data = served.data
    ids = [int(i) for i in data.val_ids]
    assert np.all(np.diff(ids) == 1), "the held-out frames are one contiguous segment"
    wav = tmp / "source.wav"
    served.store.download(_artifact(served.stack, served.avatar["id"], "audio"), wav)
    wave, rate = sf.read(wav, dtype="float32")
    lo, hi = ids[0] * rate // 25, (ids[-1] + 1) * rate // 25
    sf.write(tmp / "heldout.wav", wave[lo:hi], rate)
    options = {
        "pose": [data.pose(i).reshape(-1).tolist() for i in ids],
        "eyes": [float(data.eye(i)) for i in ids],
    }
    return HeldOut(ids, tmp / "heldout.wav", options)


def decode(video: Path) -> Iterator[np.ndarray]:
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def test_triton_frames_equal_the_in_process_backend(served: Served, tmp_path: Path) -> None:
    """The conditions a render job builds, through Triton (HTTP and gRPC) and in-process."""
    request = held_out_request(served, tmp_path)
    avatar_id = served.avatar["id"]
    wave, _ = sf.read(request.audio, dtype="float32")
    exported = AvatarCache(served.store).get(avatar_id)
    features = speech_features(wave, exported.manifest["audio"])
    k, w, _ = exported.input_shape("audio")
    pose = np.stack([np.reshape(p, (4, 4)) for p in request.options["pose"]]).astype(np.float32)
    local = InProcessBackend(AvatarCache(served.store))
    remotes = [TritonBackend(served.triton.http_url), TritonBackend(served.triton.grpc_url, "grpc")]
    compared = 0
    for batch in frame_batches(
        assets_from_arrays(exported.assets), features[:24], k, pose, "natural", 8, w // 2
    ):
        ours = local.render(avatar_id, "radnerf", named(batch))
        for remote in remotes:
            theirs = remote.render(avatar_id, "radnerf", named(batch))
            assert theirs.shape == ours.shape == (len(batch.poses), 128, 128, 4)
            assert int(np.abs(theirs.astype(np.int16) - ours).max()) <= 1
        assert ours[..., 3].mean() > 50  # real frames, not an empty layer
        compared += len(ours)
    assert compared == 24


def test_render_job_through_triton_reproduces_the_held_out_frames(
    served: Served, tmp_path: Path
) -> None:
    request = held_out_request(served, tmp_path)
    rnd = served.client.create_render(served.avatar["id"], request.audio, options=request.options)
    done = served.client.wait("render", rnd["id"], timeout=900)
    assert done["status"] == "done", (done, served.stack.logs_dir)
    video = served.client.download_video(rnd["id"], tmp_path / "out.mp4")

    # The container: H.264 + AAC, 25 fps, one frame per 40 ms of audio, in sync, tagged.
    duration = sf.info(str(request.audio)).duration
    with av.open(str(video)) as container:
        vs, aus = container.streams.video[0], container.streams.audio[0]
        assert (vs.codec_context.name, aus.codec_context.name) == ("h264", "aac")
        assert vs.codec_context.pix_fmt == "yuv420p"
        assert float(vs.average_rate) == 25.0
        frames = vs.frames
        v_dur = float(vs.duration * vs.time_base)
        a_dur = float(aus.duration * aus.time_base)
        tags = dict(container.metadata)
    assert abs(frames - duration * 25) <= 1
    assert abs(v_dur - a_dur) <= 0.040
    assert "AI-generated" in tags.get("comment", "")
    assert served.avatar["id"] in tags["comment"] and rnd["id"] in tags["comment"]

    # The pixels: PSNR against the held-out ground truth within 1 dB of the avatar's own
    # evaluation, and mouth motion that follows the true mouth as the evaluation found.
    data, stored = served.data, served.avatar["metrics"]
    errors, opens, frozen, frozen_errors = [], [], [], []
    truth = np.array([data.mouth_openness(i) for i in request.ids])
    with FaceMeter() as meter, FaceMeter() as still_meter:
        first: np.ndarray | None = None
        for i, image in zip(request.ids, decode(video), strict=True):
            target = data.frame(i).rgb
            errors.append(np.mean(((image.astype(np.float64) - target) / 255.0) ** 2))
            opens.append(meter.openness(image))
            first = image if first is None else first
            frozen.append(still_meter.openness(first))
            frozen_errors.append(np.mean(((first.astype(np.float64) - target) / 255.0) ** 2))
    psnr = psnr_from_mse(float(np.mean(errors)))
    lipsync = lipsync_proxy(np.array(opens), truth)
    print(
        f"mp4 PSNR {psnr:.2f} dB vs {stored['psnr']}; lip sync {lipsync:.3f} vs {stored['lipsync']}"
    )
    assert abs(psnr - stored["psnr"]) <= 1.0
    assert stored["lipsync"] > 0.3 and lipsync > 0.3
    # A frozen renderer (the first frame held) cannot pass both checks.
    frozen_psnr = psnr_from_mse(float(np.mean(frozen_errors)))
    frozen_sync = lipsync_proxy(np.array(frozen), truth)
    print(f"frozen control: PSNR {frozen_psnr:.2f} dB, lip sync {frozen_sync:.3f}")
    assert not (abs(frozen_psnr - stored["psnr"]) <= 1.0 and frozen_sync > 0.3)


def test_two_avatars_render_concurrently_through_one_model(
    served: Served, trained_avatar: TrainedAvatar, tmp_path: Path
) -> None:
    """A second avatar (trained in-process) exported into the same store, rendered at once."""
    trainer = trained_avatar.trainer
    second = "av_second_triton"
    with trainer.ema.applied():
        export_avatar(
            trainer.model, assets_of(trainer.data), trainer.data.reader.manifest.audio,
            tmp_path / "export",
        )  # fmt: skip
    upload_export(served.store, second, tmp_path / "export")
    first = served.avatar["id"]
    expected: dict[str, np.ndarray] = {}
    conditions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    local = InProcessBackend(AvatarCache(served.store))
    for avatar_id in (first, second):
        ex: ExportedAvatar = local.cache.get(avatar_id)
        k, w, d = ex.input_shape("audio")
        audio = np.random.default_rng(7).normal(0, 1, (4, k, w, d)).astype(np.float32)
        conditions[avatar_id] = {
            "pose": ex.assets["poses"][:4],
            "audio": audio,
            "eye": ex.assets["eyes"][:4],
        }
        expected[avatar_id] = local.render(avatar_id, "radnerf", conditions[avatar_id])
    assert not np.array_equal(expected[first], expected[second])  # two different avatars

    results: dict[str, list[np.ndarray]] = {first: [], second: []}
    errors: list[BaseException] = []

    def client(avatar_id: str) -> None:
        backend = TritonBackend(served.triton.http_url)
        try:
            for _ in range(3):
                results[avatar_id].append(
                    backend.render(avatar_id, "radnerf", conditions[avatar_id])
                )
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(a,)) for a in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for avatar_id, got in results.items():
        assert len(got) == 3
        for frames in got:
            assert int(np.abs(frames.astype(np.int16) - expected[avatar_id]).max()) <= 1
    served.store.delete_prefix(export_prefix(second))


def _cache_events(triton: TritonServer, model: str = "radnerf") -> dict[str, float]:
    events = {}
    for line in httpx.get(triton.metrics_url, timeout=10).text.splitlines():
        # every family's model counts apart (model label); this test drives one of them
        if (
            line.startswith("talkinghead_renderer_avatar_cache_total{")
            and f'model="{model}"' in line
        ):
            event = line.split('event="', 1)[1].split('"', 1)[0]
            events[event] = float(line.rsplit(" ", 1)[1])
    return events


def test_lru_evicts_and_reloads_avatars(served: Served, tmp_path: Path) -> None:
    """A Triton whose cache holds one avatar: A, B, A loads three times and evicts twice."""
    first = served.avatar["id"]
    second = "av_lru_copy"
    # A second export of the same weights is a second avatar as far as the cache goes.
    for name in served.store.list(export_prefix(first)):
        served.store.download(name, tmp_path / "copy" / name.rsplit("/", 1)[1])
    upload_export(served.store, second, tmp_path / "copy")
    env = {
        "TH_STORAGE_DIR": str(served.store.root),
        "TH_DATA_DIR": str(tmp_path),
        "TH_AVATAR_CACHE_SIZE": "1",
        "TH_TORCH_THREADS": "1",
    }
    with TritonServer(env=env) as triton:
        backend = TritonBackend(triton.http_url)
        ex = AvatarCache(served.store).get(first)
        k, w, d = ex.input_shape("audio")
        args = {
            "pose": ex.assets["poses"][:1],
            "audio": np.zeros((1, k, w, d), np.float32),
            "eye": ex.assets["eyes"][:1],
        }
        outputs = [backend.render(a, "radnerf", args) for a in (first, second, first, first)]
        events = _cache_events(triton)
    assert events == {"load": 3.0, "evict": 2.0, "hit": 1.0}
    assert all(np.array_equal(o, outputs[0]) for o in outputs)  # reloaded, same frames
    served.store.delete_prefix(export_prefix(second))

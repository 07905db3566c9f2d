"""The AD-NeRF style benchmark baseline, and device-agnostic code for both renderer families."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from talkinghead.components.rays import box_intersection
from talkinghead.data.ray_batches import sample_rays
from talkinghead.families.radnerf.adnerf_baseline import BaselineNerf, sample_pdf, stratified_depths
from talkinghead.families.radnerf.config import TINY, preset
from talkinghead.families.radnerf.model import Conditions, RadNerf
from talkinghead.families.radnerf.training import MODELS

ROOT = Path(__file__).resolve().parents[2]
FEATURE_DIM = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5 s synthetic clip preprocessed at 64 px (about 10 s, once for the module)."""
    from talkinghead.preprocess.pipeline import PreprocessConfig, preprocess_video
    from talkinghead.synthetic import generate

    root = tmp_path_factory.mktemp("baseline-data")
    clip = generate(root / "source", seconds=5, size=256)
    preprocess_video(clip.video, root / "dataset", PreprocessConfig(size=64))
    return root / "dataset"


@pytest.fixture
def model() -> BaselineNerf:
    """A fresh baseline with the tiny preset's sizes."""
    torch.manual_seed(0)
    return BaselineNerf(TINY.model, num_frames=10, feature_dim=FEATURE_DIM)


def _rays(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from a camera 3 units in front of the box, aimed at points inside it."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.tensor([0.0, 0.0, -3.0]).expand(n, 3).clone()
    aim = torch.rand((n, 3), generator=g) * 1.6 - 0.8
    dirs = aim - origins
    return origins, dirs / dirs.norm(dim=1, keepdim=True)


def _conditions(m: torch.nn.Module, frames: int) -> tuple[torch.Tensor, ...]:
    """Audio code, eye ratio and latent of `frames` frames from random features."""
    k, w = TINY.model.attention_window, TINY.model.audio_window
    audio = torch.randn(frames, k, w, FEATURE_DIM)
    code = m.audio_code(audio)  # type: ignore[operator]
    eye = torch.full((frames,), 0.3)
    latent = m.head_codes(torch.arange(frames))  # type: ignore[operator]
    return code, eye, latent


def test_render_head_shapes_and_ranges(model: BaselineNerf) -> None:
    """Premultiplied colour within opacity, opacity in [0, 1]; regularisers are zero."""
    origins, dirs = _rays(64)
    away = torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, 1.0]])  # misses the box
    origins, dirs = torch.cat([origins, away[0]]), torch.cat([dirs, away[1]])
    code, eye, latent = _conditions(model, 2)
    ray_frame = torch.arange(len(origins)) % 2
    out = model.render_head(origins, dirs, ray_frame, code, eye, latent, torch.Generator())
    out.rgb.sum().backward()  # the fine level is differentiable down to the audio encoder
    assert model.field.layers[0].weight.grad is not None
    assert any(p.grad is not None for p in model.audio.parameters())
    out = type(out)(*(x.detach() for x in (out.rgb, out.acc, out.audio_l1, out.eye_gate)))
    assert out.rgb.shape == (65, 3) and out.acc.shape == (65,)
    assert out.audio_l1.shape == (65,) and out.eye_gate.shape == (65,)
    assert bool((out.acc >= 0).all()) and bool((out.acc <= 1 + 1e-5).all())
    assert bool((out.rgb >= 0).all()) and bool((out.rgb <= out.acc[:, None] + 1e-5).all())
    assert float(out.acc[-1]) == 0.0 and float(out.rgb[-1].abs().sum()) == 0.0
    assert float(out.audio_l1.abs().sum()) == 0.0 and float(out.eye_gate.abs().sum()) == 0.0


def test_interface_the_trainer_uses(model: BaselineNerf) -> None:
    """No grids, no torso, no occupancy grid; the head groups hold every trained parameter."""
    assert model.occupancy is None
    assert model.head_grid_parameters() == []
    assert model.torso_grid_parameters() == [] and model.torso_net_parameters() == []
    head = {id(p) for p in model.head_net_parameters()}
    unused = {id(p) for p in model.torso_codes.parameters()}
    assert {id(p) for p in model.parameters()} - unused == head
    assert model.mean_translation.shape == (3,) and model.eye_scale.shape == ()
    assert model.occupancy_threshold.shape == ()
    assert MODELS["adnerf"] is BaselineNerf


def test_stratified_depths_one_per_stratum() -> None:
    """Each coarse sample lies in its own stratum, jittered or at the stratum centre."""
    near, far = torch.tensor([0.5, 1.0]), torch.tensor([2.5, 1.5])
    for gen in (None, torch.Generator().manual_seed(1)):
        t, edges = stratified_depths(near, far, 64, gen)
        assert t.shape == (2, 64) and edges.shape == (2, 65)
        assert bool((t >= edges[:, :-1]).all()) and bool((t <= edges[:, 1:]).all())
    t, edges = stratified_depths(near, far, 64, None)
    assert torch.allclose(t, (edges[:, :-1] + edges[:, 1:]) / 2)


def test_fine_samples_concentrate_where_coarse_weights_are() -> None:
    """Importance samples follow the coarse weights: a peaked pdf gets (almost) all of them."""
    edges = torch.linspace(0.0, 1.0, 65).expand(3, 65).contiguous()
    weights = torch.zeros(3, 64)
    weights[0, 20] = 1.0  # one surface
    weights[1, 10], weights[1, 50] = 0.75, 0.25  # two surfaces, three to one
    weights[2] = 0.0  # an empty ray: uniform fallback
    for gen in (None, torch.Generator().manual_seed(0)):
        t = sample_pdf(edges, weights, 64, gen)
        assert t.shape == (3, 64)
        in_20 = (t[0] >= 20 / 64) & (t[0] <= 21 / 64)
        assert float(in_20.float().mean()) > 0.95
        in_10 = ((t[1] >= 10 / 64) & (t[1] <= 11 / 64)).float().mean()
        in_50 = ((t[1] >= 50 / 64) & (t[1] <= 51 / 64)).float().mean()
        assert 0.6 < float(in_10) < 0.9 and 0.1 < float(in_50) < 0.4
        assert float(in_10 + in_50) > 0.95
        hist = torch.histc(t[2], bins=4, min=0.0, max=1.0)
        assert float(hist.min()) >= 8  # spread over the whole ray


def test_render_head_places_fine_samples_on_the_surface(model: BaselineNerf) -> None:
    """With an opaque slab in the field, the fine samples crowd inside the slab."""
    seen: list[torch.Tensor] = []

    def slab(x: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(x.detach())
        inside = (x[:, 2] > 0.2) & (x[:, 2] < 0.3)
        return inside.float() * 50.0, torch.full((len(x), 3), 0.5)

    model.field.forward = slab  # type: ignore[method-assign, assignment]
    origins = torch.tensor([[0.0, 0.0, -3.0]]).expand(8, 3)
    dirs = torch.tensor([[0.0, 0.0, 1.0]]).expand(8, 3)
    code, eye, latent = _conditions(model, 1)
    model.render_head(origins, dirs, torch.zeros(8, dtype=torch.long), code, eye, latent)
    coarse, fine = seen[0][:, 2], seen[1][:, 2]
    assert len(coarse) == 8 * 64 and len(fine) == 8 * 128
    in_slab_coarse = ((coarse > 0.2) & (coarse < 0.3)).float().mean()
    in_slab_fine = ((fine > 0.18) & (fine < 0.32)).float().mean()
    assert float(in_slab_coarse) < 0.1  # the slab is 5% of the box depth
    assert float(in_slab_fine) > 0.45  # about half of the 128: the 64 importance samples


def test_render_frames(model: BaselineNerf) -> None:
    """Whole frames: RGBA with premultiplied colour; no torso in the baseline."""
    k, w = TINY.model.attention_window, TINY.model.audio_window
    pose = torch.eye(4)
    pose[2, 3] = 0.6  # head 0.6 m in front of the camera
    cond = Conditions(
        poses=pose.expand(2, 4, 4), audio=torch.randn(2, k, w, FEATURE_DIM), eye=torch.ones(2)
    )
    K = torch.tensor([[16.0, 0.0, 6.0], [0.0, 16.0, 6.0], [0.0, 0.0, 1.0]])
    rgba = model.render_frames(cond, K, 12, chunk=50)
    assert rgba.shape == (2, 12, 12, 4)
    assert bool((rgba[..., 3] >= 0).all()) and bool((rgba[..., 3] <= 1 + 1e-5).all())
    assert bool((rgba[..., :3] <= rgba[..., 3:] + 1e-5).all())
    with pytest.raises(NotImplementedError):
        model.render_frames(cond, K, 12, torso=True)


def test_trainer_steps_reduce_the_loss(dataset: Path, tmp_path: Path) -> None:
    """The baseline trains through the same Trainer (head stage only) and its loss falls."""
    from talkinghead.families.radnerf.training import RadNerfTrainer

    config = preset(
        "tiny",
        head_steps=8,
        lips_steps=0,
        torso_steps=0,
        rays_per_step=64,
        frames_per_step=1,
        resolution=64,
    )
    trainer = RadNerfTrainer(dataset, tmp_path, config, torch.device("cpu"), model="adnerf")
    assert isinstance(trainer.model, BaselineNerf)
    k = config.model.attention_window
    batch = sample_rays(trainer.data, np.random.default_rng(123), 2, 256, 0.8, "headless", k)

    def held_loss() -> float:
        with torch.no_grad():
            return float(
                trainer.recipe._head_loss(batch, trainer.step, torch.Generator().manual_seed(0))[0]
            )

    before = held_loss()
    assert trainer.run() == 8
    assert trainer.done and trainer.state.step == 8
    assert held_loss() < before


def test_both_families_render_on_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device-agnostic: both families build, move to a CPU device and render with CUDA off."""

    def no_cuda(*_: object, **__: object) -> None:
        raise AssertionError("a CUDA call on a CPU run")

    monkeypatch.setattr(torch.Tensor, "cuda", no_cuda)
    monkeypatch.setattr(torch.nn.Module, "cuda", no_cuda)
    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    monkeypatch.setattr(torch.cuda, "current_device", no_cuda)
    device = torch.device("cpu")
    origins, dirs = _rays(32)
    for cls in (RadNerf, BaselineNerf):
        torch.manual_seed(0)
        m = cls(TINY.model, 4, FEATURE_DIM).to(device)
        code, eye, latent = _conditions(m, 2)
        ray_frame = torch.arange(32, device=device) % 2
        out = m.render_head(origins.to(device), dirs.to(device), ray_frame, code, eye, latent)
        assert out.rgb.device == device and bool(torch.isfinite(out.rgb).all())
        assert bool(box_intersection(origins, dirs)[2].all())  # every ray met the head box


def _cuda_uses(path: Path) -> Iterator[tuple[int, str]]:
    """Lines that name CUDA in code (attributes `.cuda`, strings "cuda..."), by function."""
    tree = ast.parse(path.read_text(), str(path))
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "default_device":
            allowed |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    for node in ast.walk(tree):
        named = (isinstance(node, ast.Attribute) and node.attr == "cuda") or (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.lower().startswith("cuda")
        )
        if named and isinstance(node, ast.expr) and node.lineno not in allowed:
            yield node.lineno, ast.unparse(node)


def test_no_hard_coded_cuda_in_the_library() -> None:
    """Only `default_device` may mention CUDA; everything else takes the device it is given."""
    offenders = [
        f"{p.relative_to(ROOT)}:{line}: {text}"
        for p in sorted((ROOT / "talkinghead").rglob("*.py"))
        for line, text in _cuda_uses(p)
    ]
    assert offenders == []

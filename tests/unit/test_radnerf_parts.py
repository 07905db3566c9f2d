"""Building blocks of the RAD-NeRF renderer: encoders, rays, occupancy, sampling, compositing."""

from __future__ import annotations

import numpy as np
import torch

from talkinghead.components.grids import PlaneEncoder, TriPlaneEncoder
from talkinghead.components.occupancy import MaxOccupancyGrid
from talkinghead.components.rays import box_intersection, head_rays
from talkinghead.components.volume import composite, occupied_samples
from talkinghead.data.frames import audio_stack
from talkinghead.families.radnerf.config import TINY, GridConfig, RadNerfConfig, preset
from talkinghead.families.radnerf.model import Conditions, RadNerf
from talkinghead.preprocess.audio import window_at


def test_plane_encoder_interpolates_and_learns() -> None:
    enc = PlaneEncoder(GridConfig((4, 8), 3))
    pts = torch.rand(50, 2) * 2 - 1
    out = enc(pts)
    assert out.shape == (50, 6)
    out.sum().backward()
    grads = [p.grad for p in enc.planes]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # A grid node's value is returned exactly at that node (align_corners=True).
    with torch.no_grad():
        enc.planes[0][0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    corner = enc(torch.tensor([[-1.0, -1.0]]))[0, :3]
    assert torch.allclose(corner, torch.tensor([1.0, 2.0, 3.0]))


def test_triplane_encoder_separates_points_that_share_a_plane_projection() -> None:
    enc = TriPlaneEncoder(GridConfig((8,), 2))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in enc.planes:
            p.uniform_(0.0, 1.0)
    a = torch.tensor([[0.5, 0.5, -0.5]])
    b = torch.tensor([[0.5, 0.5, 0.5]])  # same xy projection, other depth
    assert not torch.allclose(enc(a), enc(b))


def test_head_rays_follow_the_pose() -> None:
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]]).expand(1, 3, 3)
    pose = torch.eye(4)[None].clone()
    pose[0, 2, 3] = 1.0  # head 1 m in front of the camera
    o, d = head_rays(torch.tensor([[31, 31]]), K, pose, 0.2)
    # Centre pixel of a frontal head: from 1 m in front of the face, looking down +z.
    assert torch.allclose(o, torch.tensor([[0.0, 0.0, -5.0]]), atol=1e-6)
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-2)
    yaw = torch.eye(4)[None].clone()
    c, s = np.cos(0.3), np.sin(0.3)
    yaw[0, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float32)
    yaw[0, 2, 3] = 1.0
    o2, _d2 = head_rays(torch.tensor([[31, 31]]), K, yaw, 0.2)
    assert abs(float(o2[0, 0])) > 1.0  # the camera moved sideways in the head frame
    near, far, hit = box_intersection(o, d)
    assert bool(hit[0]) and abs(float(near[0]) - 4.0) < 0.05 and abs(float(far[0]) - 6.0) < 0.05


def _ball(radius: float, centre: tuple[float, float, float]) -> object:
    c = torch.tensor(centre)

    def density(points: torch.Tensor) -> torch.Tensor:
        return ((points - c).norm(dim=1) < radius).float() * 100.0

    return density


def test_max_occupancy_grid_keeps_the_maximum_over_conditions() -> None:
    grid = MaxOccupancyGrid(16)
    gen = torch.Generator().manual_seed(0)
    thr = grid.sigma_threshold(0.01)
    grid.update(_ball(0.3, (-0.5, 0, 0)), 0.95, 1.0, gen)  # type: ignore[arg-type]
    grid.update(_ball(0.3, (0.5, 0, 0)), 0.95, 1.0, gen)  # type: ignore[arg-type]
    pts = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.8, 0.8]])
    # Both "audio conditions" stay occupied (max), empty space is free.
    assert grid.occupied(pts, thr).tolist() == [True, True, False]
    for _ in range(200):  # a condition never seen again decays away
        grid.update(_ball(0.3, (0.5, 0, 0)), 0.9, 1.0, gen)  # type: ignore[arg-type]
    assert grid.occupied(pts, thr).tolist() == [False, True, False]


def test_samples_stay_inside_the_occupied_interval() -> None:
    grid = MaxOccupancyGrid(32)
    gen = torch.Generator().manual_seed(0)
    grid.update(_ball(0.25, (0.0, 0.0, 0.0)), 0.95, 1.0, gen)  # type: ignore[arg-type]
    thr = grid.sigma_threshold(0.01)
    o = torch.tensor([[0.0, 0.0, -5.0], [0.0, 0.9, -5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    s = occupied_samples(o, d, grid, thr, 16, 64, gen)
    assert s.hit.tolist() == [True, False]  # the second ray misses the ball
    z = s.points[0, :, 2]
    # 16 samples within the ball's depth range plus about one probe step of margin.
    assert float(z.min()) > -0.25 - 0.15 and float(z.max()) < 0.25 + 0.15
    assert s.points.shape == (2, 16, 3)


def test_composite_front_sample_wins() -> None:
    sigma = torch.tensor([[1e4, 1e4, 0.0]])
    rgb = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    colour, acc, _w = composite(sigma, rgb, torch.full((1, 3), 0.1), torch.tensor([True]))
    assert torch.allclose(colour, torch.tensor([[1.0, 0, 0]]), atol=1e-4)
    assert abs(float(acc[0]) - 1.0) < 1e-4
    empty, acc0, _ = composite(sigma, rgb, torch.full((1, 3), 0.1), torch.tensor([False]))
    assert float(acc0[0]) == 0.0 and float(empty.abs().sum()) == 0.0


def test_audio_stack_matches_the_dataset_windows_and_clamps() -> None:
    feats = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
    stack = audio_stack(feats, 10, k=8, context=4)
    assert stack.shape == (8, 8, 3)
    # Window j of the stack is frame 10 - 4 + j's own dataset window.
    for j in range(8):
        assert np.array_equal(stack[j], window_at(feats, 10 - 4 + j, 4))
    edge = audio_stack(feats, 0, k=8, context=4)
    assert np.array_equal(edge[0], window_at(feats, 0, 4))


def test_config_round_trips_and_presets_validate() -> None:
    assert RadNerfConfig.from_dict(TINY.to_dict()) == TINY
    assert preset("cpu-quick", head_steps=7).train.head_steps == 7
    try:
        preset("nope")
    except ValueError as exc:
        assert "cpu-quick" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("unknown preset accepted")


def test_render_frames_gives_premultiplied_rgba_on_cpu() -> None:
    cfg = TINY.model
    model = RadNerf(cfg, num_frames=4, feature_dim=5).to(torch.device("cpu"))
    model.mean_translation.fill_(0.0)
    pose = torch.eye(4)[None].clone()
    pose[0, 2, 3] = 0.6
    cond = Conditions(
        pose, torch.zeros(1, cfg.attention_window, cfg.audio_window, 5), torch.ones(1)
    )
    K = torch.tensor([[60.0, 0, 16], [0, 60.0, 16], [0, 0, 1]])
    rgba = model.render_frames(cond, K, 32)
    assert rgba.shape == (1, 32, 32, 4)
    assert float(rgba.min()) >= 0.0 and float(rgba[..., 3].max()) <= 1.0 + 1e-6
    # Premultiplied: no colour channel exceeds its alpha.
    assert bool((rgba[..., :3] <= rgba[..., 3:4] + 1e-5).all())

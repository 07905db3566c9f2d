"""RAD-NeRF against the AD-NeRF style baseline (issue 4), both trained in this run on CPU.

On the synthetic talking-head clip (generated, then preprocessed at the training size):
  (a) time to quality: the baseline trains its head for a fixed wall-clock budget; the best
      held-out PSNR it reaches is the target; ours trains until it reaches that target.
      Training time only: evaluations pause the clock. Speed-up = baseline time / ours.
  (b) render frames/s at 1x and 2x the training size: ours (head + torso, whole frames) and
      the baseline (head; every n-th pixel of the frame, time scaled by n: the baseline costs
      the same for every ray that meets the head box, so a strided subset is a fair sample).
  (c) peak RSS of training ours for a fixed number of steps (all three stages) on a short
      and a long clip, each in a fresh child process (its VmHWM): flat in length?
  (d) the full `cpu-quick` preset on the clip: wall time, then `evaluate` (PSNR, SSIM, LMD,
      lip-sync proxy and its shuffled-audio control) on the held-out frames with EMA weights.

The held-out PSNR of (a) is one function for both models: the head (mean appearance code, no
jitter, the better of the EMA and the raw weights) over the frame with its head replaced by
the background plate, which is exactly the head stage's training target, on a fixed random
set of pixels of evenly spaced validation frames. Neither model has a trained torso in (a),
so the frame's own torso stands in for it. Both use the same trainer, rays per step, data and
loss. The baseline learns at NeRF's rate, 5e-4 (at cpu-quick's 5e-3, tuned for our small
MLPs, it emptied its head box within 15 steps and stayed there), without decay inside its
budget (its schedule spans 100k steps).

    python bench/radnerf.py --json radnerf.json   # about an hour on 2 cores (not in make bench)
    python bench/radnerf.py --quick               # smoke check: every part, tiny, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from talkinghead.components.rays import head_rays, pixel_grid  # noqa: E402
from talkinghead.data.frames import TrainingData  # noqa: E402
from talkinghead.families.radnerf.config import RadNerfConfig, preset  # noqa: E402
from talkinghead.families.radnerf.model import Conditions  # noqa: E402
from talkinghead.families.radnerf.training import RadNerfTrainer  # noqa: E402
from talkinghead.metrics import psnr_from_mse  # noqa: E402

CPU = torch.device("cpu")
BASELINE_HEAD_STEPS = 100_000  # far beyond the budget: no learning-rate decay inside it

RSS_CHILD = """
import sys, tempfile, time
from pathlib import Path
import torch
from talkinghead.families.radnerf.config import preset
from talkinghead.families.radnerf.training import RadNerfTrainer
data, steps, res = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lips, torso = max(1, steps // 10), max(1, steps // 5)
config = preset("cpu-quick", head_steps=steps - lips - torso, lips_steps=lips, torso_steps=torso,
                resolution=res)
with tempfile.TemporaryDirectory() as tmp:
    trainer = RadNerfTrainer(data, Path(tmp), config, torch.device("cpu"))
    t = time.perf_counter()
    while not trainer.done:
        trainer.train_step()
    seconds = time.perf_counter() - t
# VmHWM is this image's own peak (ru_maxrss would count the forking parent's pages too).
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(len(trainer.data), seconds, int(hwm) / 1024)
"""


# -- data ---------------------------------------------------------------------------------
def prepare(data_dir: Path, seconds: float, size: int) -> Path:
    """A synthetic clip of `seconds` preprocessed at `size`; reused when already there."""
    from talkinghead.preprocess.pipeline import PreprocessConfig, preprocess_video
    from talkinghead.synthetic import generate

    root = data_dir / f"clip{seconds:g}-{size}"
    dataset = root / "dataset"
    if (dataset / "manifest.json").exists():
        return dataset
    t = time.perf_counter()
    # Ingest refuses sources under 256 px; the crop is resized to the training size.
    clip = generate(root / "source", seconds=seconds, size=max(256, 2 * size))
    preprocess_video(clip.video, dataset, PreprocessConfig(size=size))
    log(f"prepared a {seconds:g} s clip at {size} px in {time.perf_counter() - t:.0f} s")
    return dataset


def log(message: str) -> None:
    """Progress on stderr with a timestamp (stdout carries the table)."""
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


# -- the shared held-out PSNR -------------------------------------------------------------
@dataclass
class Probe:
    """Fixed held-out pixels: frames, their pixels, targets and what lies behind the head."""

    frames: list[int]
    pixels: list[torch.Tensor]  # (P, 2) per frame
    target: list[torch.Tensor]  # (P, 3) in [0, 1]
    behind: list[torch.Tensor]  # (P, 3) the frame with its head replaced by the plate
    conditions: Conditions


def make_probe(data: TrainingData, frames: int, pixels: int, k: int, seed: int = 0) -> Probe:
    """`pixels` uniform random pixels of each of `frames` evenly spaced validation frames."""
    val = data.val_ids if len(data.val_ids) else data.train_ids
    picks = np.linspace(0, len(val) - 1, min(frames, len(val))).round().astype(int)
    ids = [int(val[i]) for i in picks]
    rng = np.random.default_rng(seed)
    px, target, behind = [], [], []
    for i in ids:
        frame = data.frame(i)
        if pixels >= data.size * data.size:
            p = pixel_grid(data.size, data.size).numpy()
        else:
            p = np.stack(
                np.unravel_index(rng.choice(data.size**2, pixels, replace=False), (data.size,) * 2)
            )[::-1].T.copy()  # (x, y)
        px.append(torch.from_numpy(p).long())
        target.append(torch.from_numpy(frame.rgb[p[:, 1], p[:, 0]]).float() / 255.0)
        behind.append(torch.from_numpy(data.headless(frame)[p[:, 1], p[:, 0]]).float() / 255.0)
    cond = Conditions(
        poses=torch.from_numpy(np.stack([data.pose(i) for i in ids])),
        audio=torch.from_numpy(np.stack([data.audio(i, k) for i in ids])),
        eye=torch.tensor([data.eye(i) for i in ids], dtype=torch.float32),
    )
    return Probe(ids, px, target, behind, cond)


@torch.no_grad()
def heldout_psnr(model: Any, K: torch.Tensor, probe: Probe, chunk: int = 4096) -> float:
    """PSNR of the head over the headless frame on the probe's pixels (pooled MSE)."""
    model.eval()
    code = model.audio_code(probe.conditions.audio)
    latent = model.head_codes.weight.mean(dim=0, keepdim=True)  # unseen frames: mean code
    sse, count = 0.0, 0
    for f in range(len(probe.frames)):
        px = probe.pixels[f]
        for lo in range(0, len(px), chunk):
            p = px[lo : lo + chunk]
            n = len(p)
            o, d = head_rays(
                p, K.expand(n, 3, 3), probe.conditions.poses[f : f + 1].expand(n, 4, 4),
                model.config.bound,
            )  # fmt: skip
            frame = torch.zeros(n, dtype=torch.long)
            head = model.render_head(
                o, d, frame, code[f : f + 1], probe.conditions.eye[f : f + 1], latent
            )
            pred = head.rgb + (1.0 - head.acc)[:, None] * probe.behind[f][lo : lo + n]
            pred = (pred.clamp(0, 1) * 255.0 + 0.5).floor() / 255.0  # as a saved uint8 frame
            sse += float(((pred - probe.target[f][lo : lo + n]) ** 2).sum())
            count += pred.numel()
    return psnr_from_mse(sse / count)


def probe_psnr(trainer: RadNerfTrainer, probe: Probe) -> dict[str, float]:
    """Held-out PSNR with the EMA weights (what an avatar ships) and with the raw weights.

    The score is the better of the two: an EMA of 0.95 lags about 20 steps, which is the
    baseline's whole budget on 2 cores, so EMA alone would judge it by its initial weights.
    """
    raw = heldout_psnr(trainer.model, trainer.K, probe)
    with trainer.ema.applied():
        ema = heldout_psnr(trainer.model, trainer.K, probe)
    return {"psnr": max(ema, raw), "psnr_ema": ema, "psnr_raw": raw}


# -- (a) time to the baseline's PSNR ------------------------------------------------------
def head_config(steps: int, resolution: int, **overrides: Any) -> RadNerfConfig:
    """`cpu-quick` with the head stage only (no lips, no torso)."""
    return preset(
        "cpu-quick",
        head_steps=steps,
        lips_steps=0,
        torso_steps=0,
        resolution=resolution,
        **overrides,
    )


def train_timed(
    trainer: RadNerfTrainer,
    probe: Probe,
    budget_s: float,
    evaluate_now: Callable[[int, float], bool],
    target: float | None = None,
) -> list[dict[str, float]]:
    """Train (clock paused while evaluating) until the budget, the schedule or the target.

    Wall seconds are the measure; CPU seconds of this process ride along, because other jobs
    share these cores and the load changes between the two models' runs.
    """
    history = [{"step": 0, "train_s": 0.0, "cpu_s": 0.0, **probe_psnr(trainer, probe)}]
    train_s = cpu_s = 0.0
    while not trainer.done and train_s < budget_s:
        t, c = time.perf_counter(), time.process_time()
        trainer.train_step()
        train_s += time.perf_counter() - t
        cpu_s += time.process_time() - c
        step = trainer.state.step
        last = trainer.done or train_s >= budget_s
        if evaluate_now(step, train_s) or last:
            scores = probe_psnr(trainer, probe)
            history.append({"step": step, "train_s": train_s, "cpu_s": cpu_s, **scores})
            h = history[-1]
            log(f"{trainer.recipe.name}: step {step}, {train_s:.1f} s, PSNR ema {h['psnr_ema']:.3f}"
                f" raw {h['psnr_raw']:.3f}")  # fmt: skip
            if target is not None and history[-1]["psnr"] >= target:
                break
    return history


def ours_eval_due(step: int, _train_s: float) -> bool:
    """Dense evaluations early (ours may reach the target in a few steps), sparser later."""
    for upto, every in ((10, 1), (50, 5), (200, 10), (1000, 25)):
        if step <= upto:
            return step % every == 0
    return step % 50 == 0


def time_to_target(
    dataset: Path, work: Path, budget_s: float, resolution: int, probe_frames: int,
    probe_pixels: int, baseline_lr: float,
) -> tuple[dict[str, Any], RadNerfTrainer, RadNerfTrainer, Probe]:  # fmt: skip
    """Part (a); returns the figures and both trained trainers for part (b)."""
    config = head_config(BASELINE_HEAD_STEPS, resolution, lr_net=baseline_lr)
    base = RadNerfTrainer(dataset, work / "baseline", config, CPU, model="adnerf")
    k = base.config.model.attention_window
    probe = make_probe(base.data, probe_frames, probe_pixels, k)
    quarters = [budget_s * q for q in (0.25, 0.5, 0.75)]

    def base_due(_step: int, train_s: float) -> bool:
        due = False
        while quarters and train_s >= quarters[0]:  # one step may cross several marks
            quarters.pop(0)
            due = True
        return due

    log(f"baseline: training for {budget_s:.0f} s")
    base_hist = train_timed(base, probe, budget_s, base_due)
    best = max(base_hist[1:], key=lambda h: h["psnr"])
    target = best["psnr"]
    ours = RadNerfTrainer(dataset, work / "ours", head_config(preset("cpu-quick").train.head_steps,
                                                       resolution), CPU)  # fmt: skip
    log(f"ours: training until PSNR {target:.3f}")
    ours_hist = train_timed(ours, probe, budget_s, ours_eval_due, target)
    reached = [h for h in ours_hist if h["psnr"] >= target]
    ours_s = reached[0]["train_s"] if reached else None
    if ours_s == 0.0:
        log("ours starts above the target: the speed-up is unbounded (reported as null)")
    base_steps = base_hist[-1]["step"]
    ours_step_s = ours_hist[-1]["train_s"] / max(1, ours_hist[-1]["step"])
    result = {
        "budget_s": budget_s,
        "probe": {"frames": probe.frames, "pixels_per_frame": len(probe.pixels[0])},
        "baseline": {
            "lr": baseline_lr,
            "history": base_hist,
            "steps": base_steps,
            "s_per_step": base_hist[-1]["train_s"] / max(1, base_steps),
            "target_psnr": target,
            "target_train_s": best["train_s"],
            "target_cpu_s": best["cpu_s"],
        },
        "ours": {
            "history": ours_hist,
            "steps": ours_hist[-1]["step"],
            "s_per_step": ours_step_s,
            "reached": ours_s is not None,
            "train_s_to_target": ours_s,
            "cpu_s_to_target": reached[0]["cpu_s"] if reached else None,
            "steps_to_target": reached[0]["step"] if reached else None,
        },
        "speedup": best["train_s"] / ours_s if ours_s else None,
        "speedup_cpu": best["cpu_s"] / reached[0]["cpu_s"] if ours_s else None,
        "ours_untrained_above_target": ours_s == 0.0,
        "step_cost_ratio": (base_hist[-1]["train_s"] / max(1, base_steps)) / ours_step_s,
    }
    return result, base, ours, probe


# -- (b) render speed ---------------------------------------------------------------------
def render_speed(
    ours: RadNerfTrainer,
    base: RadNerfTrainer,
    probe: Probe,
    scales: list[int],
    stride: int,
    frames: int,
) -> dict[str, Any]:
    """Frames/s of both models at `scales` x the training size."""
    size0 = ours.data.size
    cond = probe.conditions
    rows: dict[str, Any] = {"baseline_pixel_stride": stride}
    for scale in scales:
        size = size0 * scale
        K = ours.K.clone()
        K[:2] *= scale  # the same crop seen by a camera with `scale` x the pixels
        with ours.ema.applied():
            ours.model.eval()
            ours.model.render_frames(_first(cond, 1), K, size)  # warm-up
            t = time.perf_counter()
            for i in range(frames):
                ours.model.render_frames(_first(cond, 1, i), K, size)
            ours_fps = frames / (time.perf_counter() - t)
        with base.ema.applied():
            base.model.eval()
            t = time.perf_counter()
            strided_head_render(base.model, _first(cond, 1), K, size, stride)
            base_fps = 1.0 / ((time.perf_counter() - t) * stride)
        rows[f"{size}"] = {"ours_fps": ours_fps, "baseline_fps": base_fps,
                           "ratio": ours_fps / base_fps}  # fmt: skip
        log(f"render {size}px: ours {ours_fps:.3f} fps, baseline {base_fps:.5f} fps")
    return rows


def _first(cond: Conditions, n: int, offset: int = 0) -> Conditions:
    """Conditions of `n` frames starting at `offset` (cycled)."""
    i = [(offset + j) % len(cond.poses) for j in range(n)]
    return Conditions(cond.poses[i], cond.audio[i], cond.eye[i])


@torch.no_grad()
def strided_head_render(
    model: Any, cond: Conditions, K: torch.Tensor, size: int, stride: int, chunk: int = 2048
) -> None:
    """The baseline's `render_frames` work on every `stride`-th pixel of one frame."""
    code = model.audio_code(cond.audio)
    latent = model.head_codes.weight.mean(dim=0, keepdim=True)
    px = pixel_grid(size, size)[::stride]
    for lo in range(0, len(px), chunk):
        p = px[lo : lo + chunk]
        n = len(p)
        o, d = head_rays(p, K.expand(n, 3, 3), cond.poses[:1].expand(n, 4, 4), model.config.bound)
        model.render_head(o, d, torch.zeros(n, dtype=torch.long), code, cond.eye[:1], latent)


# -- (c) memory ----------------------------------------------------------------------------
def training_rss(dataset: Path, steps: int, resolution: int) -> dict[str, float]:
    """Peak RSS (MiB, VmHWM) of a child that trains ours for `steps` steps on `dataset`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RSS_CHILD, str(dataset), str(steps), str(resolution)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("the training child failed")
    frames, seconds, peak = out.split()[-3:]
    return {"frames": int(frames), "train_s": float(seconds), "peak_rss_mib": float(peak)}


# -- (d) the full cpu-quick preset ------------------------------------------------------
def full_preset(
    dataset: Path, work: Path, config: RadNerfConfig
) -> tuple[dict[str, Any], RadNerfTrainer]:
    """Train the whole preset in its segments (as the worker does), then evaluate."""
    from talkinghead.families.radnerf.evaluation import evaluate

    trainer = RadNerfTrainer(dataset, work / "preset", config, CPU)
    t = time.perf_counter()
    while not trainer.done:
        trainer.run(config.train.segment_steps)
        log(f"preset: step {trainer.state.step}/{trainer.total_steps}")
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    with trainer.ema.applied():
        scores = evaluate(trainer.model, trainer.data, limit=config.train.eval_frames)
    result = {
        "preset": config.name,
        "steps": trainer.state.step,
        "train_wall_s": train_s,
        "eval_wall_s": time.perf_counter() - t,
        "scores": scores,
        "final_losses": trainer.state.losses[-1] if trainer.state.losses else {},
    }
    return result, trainer


# -- main ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """Where the figures come from (the load average says how shared the cores were)."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main() -> None:
    """Run the parts, print a table and write JSON after each part."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=20.0, help="baseline budget (a)")
    ap.add_argument("--resolution", type=int, default=128, help="training and render size")
    ap.add_argument("--clip-s", type=float, default=30.0, help="clip of (a), (b) and (d)")
    ap.add_argument("--rss-lengths", default="30,120", help="clip lengths of (c), seconds")
    ap.add_argument("--rss-steps", type=int, default=200, help="training steps in (c)")
    ap.add_argument("--probe-frames", type=int, default=4, help="validation frames of (a)")
    ap.add_argument("--probe-pixels", type=int, default=1024, help="pixels per frame of (a)")
    ap.add_argument("--render-frames", type=int, default=4, help="frames timed for ours (b)")
    ap.add_argument("--baseline-stride", type=int, default=4, help="pixel stride (b)")
    ap.add_argument(
        "--baseline-lr",
        type=float,
        default=5e-4,
        help="the baseline's learning rate (NeRF's; cpu-quick's 5e-3 emptied its head)",
    )
    ap.add_argument("--parts", default="a,b,c,d", help="which parts to run")
    ap.add_argument("--data-dir", type=Path, default=None, help="reuse prepared clips here")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="tiny everything: a smoke check")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.budget_min, args.clip_s, args.rss_lengths, args.rss_steps = 1.0, 8.0, "6,12", 10
        args.probe_frames, args.probe_pixels, args.render_frames = 2, 256, 1
        args.baseline_stride = 64
    results: dict[str, Any] = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")

    with tempfile.TemporaryDirectory(prefix="th-bench-radnerf-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        res = args.resolution
        dataset = prepare(data_dir, args.clip_s, res)
        work = Path(tmp)
        rendered_by: tuple[str, RadNerfTrainer] | None = None
        if parts & {"a", "b"}:
            a, base, ours, probe = time_to_target(
                dataset, work, args.budget_min * 60, res, args.probe_frames, args.probe_pixels,
                args.baseline_lr,
            )  # fmt: skip
            results["time_to_psnr"] = a
            save()
            rendered_by = ("head stage of (a)", ours)
        if "c" in parts:
            rss = {}
            for seconds in [float(s) for s in args.rss_lengths.split(",")]:
                clip = prepare(data_dir, seconds, res)
                rss[f"{seconds:g}"] = training_rss(clip, args.rss_steps, res)
                log(f"rss {seconds:g} s: {rss[f'{seconds:g}']}")
            results["training_rss"] = {"steps": args.rss_steps, "clips": rss}
            save()
        if "d" in parts:
            config = preset("cpu-quick", resolution=res)
            if args.quick:
                config = preset("cpu-quick", head_steps=20, lips_steps=5, torso_steps=5,
                                segment_steps=10, eval_frames=4, resolution=res)  # fmt: skip
            results["preset"], trained = full_preset(dataset, work, config)
            save()
            rendered_by = (f"{config.name} preset of (d)", trained)
        if "b" in parts and rendered_by is not None:
            # Ours renders fastest once its occupancy grid has pruned empty space: time the
            # fully trained avatar of (d) when there is one. The baseline's cost per frame
            # does not depend on its weights (no pruning, no early ray termination).
            label, ours = rendered_by
            render = render_speed(
                ours, base, probe, [1, 2], args.baseline_stride, args.render_frames
            )
            results["render"] = {"ours_model": label, **render}
            save()
    results["machine"]["loadavg_end"] = os.getloadavg()
    save()
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    """Markdown rows for docs/benchmarks.md."""
    m = r["machine"]
    print(
        f"\nmachine: {m['platform']}, {m['cpus']} cores, Python {m['python']}, torch {m['torch']}"
    )
    if "time_to_psnr" in r:
        a = r["time_to_psnr"]
        b, o = a["baseline"], a["ours"]
        print("| (a) time to the baseline's PSNR | baseline | ours | ratio |\n|---|---|---|---|")
        print(f"| held-out PSNR target (dB) | {b['target_psnr']:.2f} | reached: {o['reached']} | |")
        ours_s = o["train_s_to_target"]
        ours_txt = (
            "not reached" if ours_s is None else f"{ours_s:.1f} s ({o['steps_to_target']} steps)"
        )
        speed = f"{a['speedup']:.1f}x" if a["speedup"] else "-"
        print(f"| training time to it | {b['target_train_s']:.0f} s ({b['steps']} steps) |"
              f" {ours_txt} | {speed} |")  # fmt: skip
        if a["speedup_cpu"]:
            print(f"| CPU seconds to it | {b['target_cpu_s']:.0f} | {o['cpu_s_to_target']:.1f} |"
                  f" {a['speedup_cpu']:.1f}x |")  # fmt: skip
        print(f"| s per step | {b['s_per_step']:.2f} | {o['s_per_step']:.3f} |"
              f" {a['step_cost_ratio']:.0f}x |")  # fmt: skip
    if "render" in r:
        print(f"(ours: the {r['render']['ours_model']})")
        print("| (b) render | baseline fps | ours fps | ratio |\n|---|---|---|---|")
        for size, row in r["render"].items():
            if isinstance(row, dict):
                print(f"| {size}x{size} | {row['baseline_fps']:.4f} | {row['ours_fps']:.2f} |"
                      f" {row['ratio']:.0f}x |")  # fmt: skip
    if "training_rss" in r:
        print("| (c) clip | frames | peak RSS MiB |\n|---|---|---|")
        for s, row in r["training_rss"]["clips"].items():
            print(f"| {s} s | {row['frames']} | {row['peak_rss_mib']:.0f} |")
    if "preset" in r:
        d = r["preset"]
        print(f"(d) {d['preset']}: {d['steps']} steps in {d['train_wall_s']:.0f} s, "
              f"eval {d['eval_wall_s']:.0f} s: {json.dumps(d['scores'])}")  # fmt: skip


if __name__ == "__main__":
    main()

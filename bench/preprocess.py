"""Preprocessing speed and memory: real-time factor and peak RSS for 30 s and 120 s inputs.

The input is the astronaut photo (scikit-image) rocking gently with a tone, at 512x512.
Each run is a fresh child process and its peak RSS is its own (ru_maxrss of RUSAGE_SELF); the
ffmpeg decoder it pipes frames from is a separate process, not counted (ru_maxrss cannot say
it: a forked child's peak starts at its parent's size). CPU seconds are the child's and its
ffmpeg helpers' user + system time: on a shared machine they say what the work costs when the
wall time says how busy the cores were. The baseline, measured in the same run on the same
file, is a plain decode of every frame (the least any pass over the video costs), so the ratio
is stable on a noisy machine.

    python bench/preprocess.py --lengths 30,120 --size 512
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys, time
from pathlib import Path
from talkinghead.media import iter_frames
from talkinghead.preprocess.pipeline import PreprocessConfig, preprocess_video
mode, video, out, size = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
if mode == "decode":
    n = sum(1 for _ in iter_frames(video, 4096))
else:
    n = preprocess_video(video, out, PreprocessConfig(size=size)).num_frames
wall = time.perf_counter() - t
print(n, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_child(mode: str, video: Path, out: Path, size: int) -> dict[str, float]:
    """One measurement in a child: frames, wall s, CPU s and peak RSS in MiB."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(video), str(out), str(size)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert proc.stdout is not None
    output = proc.stdout.read().split()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{mode} failed")
    return {
        "frames": int(output[0]),
        "wall_s": float(output[1]),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": int(output[2]) / 1024,
    }


def main() -> None:
    """Generate inputs, measure, print a table and optionally save JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lengths", default="30,120", help="input lengths in seconds")
    ap.add_argument("--size", type=int, default=512, help="input and crop side in pixels")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from talkinghead.media import synth_face_video

    rows = []
    load = os.getloadavg()  # other work on the cores shows in the wall times, not in CPU s
    with tempfile.TemporaryDirectory(prefix="th-bench-pre-") as tmp:
        for seconds in [float(s) for s in args.lengths.split(",")]:
            clip_dir = Path(tmp) / f"clip{seconds:.0f}"
            t0 = time.perf_counter()
            clip_dir.mkdir()
            video = synth_face_video(clip_dir / "input.mp4", seconds=seconds, size=args.size)
            gen_s = time.perf_counter() - t0
            decode = run_child("decode", video, clip_dir / "x", args.size)
            run = run_child("preprocess", video, clip_dir / "dataset", args.size)
            rows.append(
                {
                    "seconds": seconds,
                    "frames": decode["frames"],
                    "dataset_frames": run["frames"],
                    "generate_s": round(gen_s, 1),
                    "decode_s": round(decode["wall_s"], 2),
                    "preprocess_s": round(run["wall_s"], 2),
                    "rtf": round(run["wall_s"] / seconds, 3),
                    "cpu_s": round(run["cpu_s"], 1),
                    "cpu_per_s": round(run["cpu_s"] / seconds, 3),
                    "vs_decode": round(run["wall_s"] / decode["wall_s"], 1),
                    "peak_rss_mib": round(run["rss_mib"]),
                    "decode_peak_rss_mib": round(decode["rss_mib"]),
                }
            )
            print(rows[-1], flush=True)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; input {args.size}x{args.size}; load average at the "
        f"start {load[0]:.1f}, at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        "| input | wall s | s per s of video | CPU s per s of video | vs plain decode |"
        " peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seconds']:.0f} s | {r['preprocess_s']} | {r['rtf']} | {r['cpu_per_s']} |"
            f" {r['vs_decode']}x | {r['peak_rss_mib']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

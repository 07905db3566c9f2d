"""Ground truth of the synthetic corpus, as face tracking sees it in the encoded videos.

Generates (or reuses) a corpus, tracks every clip with mediapipe's face mesh, and prints:
the Pearson r of tracked vs rendered lip opening and lip width; the balanced accuracy of a
viseme classifier (closed / rounded / spread / open) trained on some identities and tested
on the others, with lip shape and with mouth opening alone; and the rate at which a held-out
clip's face region is matched to its own identity. Also the generation speed.

    python bench/corpus_truth.py --identities 12 --minutes 4 --out /tmp/corpus
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from talkinghead.corpus.synth import synth_corpus
from talkinghead.corpus.truth import (
    TrackedClip,
    identity_match_rate,
    lip_measures,
    mouth_features,
    pearson,
    shape_frames,
    track_video,
    viseme_accuracy,
)


def _tracked(clip_dir: Path) -> TrackedClip:
    """Track a clip once; later runs read the cached result next to it."""
    cache = clip_dir / "tracked.npz"
    if cache.is_file():
        data = np.load(cache)
        return TrackedClip(data["points"], data["valid"], data["face"])
    tracked = track_video(clip_dir / "video.mp4")
    np.savez(cache, points=tracked.points, valid=tracked.valid, face=tracked.face)
    return tracked


def main() -> None:
    """Parse arguments, build and track the corpus, print the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=12)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clip-seconds", type=float, nargs=2, default=(6.0, 12.0))
    args = ap.parse_args()

    t0 = time.perf_counter()
    sources = synth_corpus(
        args.out, args.identities, args.minutes, args.seed, args.size, tuple(args.clip_seconds)
    )
    gen_s = time.perf_counter() - t0
    with sources.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))

    t1 = time.perf_counter()
    opens, widths, faces, ids = [], [], [], []
    shape_sets: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {True: [], False: []}
    open_sets: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {True: [], False: []}
    frames = 0
    for row in rows:
        clip_dir = args.out / Path(row["path"]).parent
        truth = np.load(clip_dir / "truth.npz")
        tracked = _tracked(clip_dir)
        n = min(len(tracked.points), len(truth["lip_open"]))
        frames += n
        pts, valid = tracked.points[:n], tracked.valid[:n]
        tracked_open, tracked_width = lip_measures(pts)
        opens.append(np.column_stack([tracked_open, truth["lip_open"][:n]])[valid])
        widths.append(np.column_stack([tracked_width, truth["lip_width"][:n]])[valid])
        shape, opening = mouth_features(pts, valid)
        identity = int(truth["identity"])
        test = identity % 3 == 2  # every third identity is held out
        shape_sets[test].append(shape_frames(shape, valid, truth["dominant"][:n]))
        open_sets[test].append(shape_frames(opening, valid, truth["dominant"][:n]))
        if len(tracked.face):
            faces.append(tracked.face)
            ids.append(identity)
    track_s = time.perf_counter() - t1

    o, w = np.vstack(opens), np.vstack(widths)
    shape_acc = viseme_accuracy(shape_sets[False], shape_sets[True])
    open_acc = viseme_accuracy(open_sets[False], open_sets[True])
    result = {
        "identities": args.identities,
        "clips": len(rows),
        "video_seconds": frames / 25.0,
        "tracked_fraction": len(o) / max(frames, 1),
        "lip_open_r": pearson(o[:, 0], o[:, 1]),
        "lip_width_r": pearson(w[:, 0], w[:, 1]),
        "viseme_balanced_accuracy": shape_acc,
        "viseme_accuracy_opening_only": open_acc,
        "viseme_gain_over_opening": shape_acc - open_acc,
        "identity_match_rate": identity_match_rate(np.array(faces), np.array(ids)),
        "generation_s": gen_s,
        "generation_s_per_video_s": gen_s / max(frames / 25.0, 1e-9),
        "tracking_s": track_s,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

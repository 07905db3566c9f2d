"""Corpus reader throughput and memory: samples/s and peak RSS per corpus and sample kind.

Each measurement is a fresh child process reading a fixed number of GeneFace-shaped
(audio window + canonical landmarks) or S3D-shaped (target and reference crops, masks, audio
window, poses) samples, epochs repeating as needed; its peak RSS is its own high-water mark
(VmHWM), so neither the parent nor another child is mixed in. An `idle` child (imports and
the index only) gives the floor, so `over_idle_mib` is what reading costs. The reader is
meant to stay flat in corpus size: the 16- and 48-identity corpora should show the same
peak RSS.

    python bench/corpus_reader.py CORPUS_DIR [CORPUS_DIR ...] --samples 2000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("geneface", "s3d")

# The child reports its own VmHWM: ru_maxrss from wait4 would not do, because Linux carries
# the pre-exec (forked) image's high-water mark into it, i.e. the parent's RSS at fork time.
CHILD = """
import json, sys
from talkinghead.corpus.reader import CorpusReader, read_samples_per_second
corpus, kind, samples = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "idle":
    CorpusReader(corpus, split="train")
    result = {"kind": kind, "samples": 0, "seconds": 0.0, "samples_per_s": 0.0}
else:
    result = read_samples_per_second(corpus, kind, samples, split="train")
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        result["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)
print(json.dumps(result))
"""


def measure_reader(corpus_dir: Path | str, kind: str, samples: int) -> dict[str, Any]:
    """Read `samples` samples of `kind` ('geneface', 's3d' or 'idle') in a fresh child."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(corpus_dir), kind, str(samples)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert proc.stdout is not None
    output = proc.stdout.read()
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"reading {kind} samples from {corpus_dir} failed")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    result.setdefault("peak_rss_mib", round(usage.ru_maxrss / 1024, 1))  # not Linux: KiB
    return result


def describe(corpus_dir: Path) -> dict[str, Any]:
    """What the index says about a corpus (the size the memory must not follow)."""
    sys.path.insert(0, str(ROOT))
    from talkinghead.corpus.index import load_index

    index = load_index(corpus_dir)
    keys = ("identities", "train_identities", "clips", "train_clips", "hours", "shards", "bytes")
    return {"corpus": str(corpus_dir), **{k: index.stats.get(k) for k in keys}}


def main() -> None:
    """Measure every corpus given and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("corpora", nargs="+", type=Path, help="corpus directories")
    ap.add_argument("--samples", type=int, default=2000, help="samples read per measurement")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    rows = []
    load = os.getloadavg()
    for corpus_dir in args.corpora:
        row = describe(corpus_dir)
        idle = measure_reader(corpus_dir, "idle", 0)
        row["idle_peak_rss_mib"] = idle["peak_rss_mib"]
        for kind in KINDS:
            result = measure_reader(corpus_dir, kind, args.samples)
            result["over_idle_mib"] = round(result["peak_rss_mib"] - idle["peak_rss_mib"], 1)
            row[kind] = result
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {
        "machine": {
            "arch": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": round(load[0], 2),
            "load_end": round(os.getloadavg()[0], 2),
        },
        "samples": args.samples,
        "corpora": rows,
        # the flat-memory claim in one number per kind: spread of peak RSS across the corpora
        "rss_spread_mib": {
            kind: round(
                max(r[kind]["peak_rss_mib"] for r in rows)
                - min(r[kind]["peak_rss_mib"] for r in rows),
                1,
            )
            for kind in KINDS
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()

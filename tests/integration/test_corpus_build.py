"""The distributed corpus build: a killed worker, bad clips, duplicates, the stored corpus."""

from __future__ import annotations

import json

from shared.storage import build_store
from talkinghead.corpus.index import load_index
from tests.fixtures.corpora import TinyCorpus, clips_of, job_of


def test_build_finishes_after_a_worker_was_killed(tiny_corpus: TinyCorpus) -> None:
    job = job_of(tiny_corpus)
    assert job.status == "ready", (job.error_code, job.error_message)
    clips = {c.id: c for c in clips_of(tiny_corpus)}
    assert all(c.status in ("accepted", "refused", "duplicate") for c in clips.values())
    # Every clip was finished exactly once, counted by the row itself.
    assert {c.id: c.completions for c in clips.values()} == {i: 1 for i in clips}
    # The killed worker's clip was started again by another worker; finished ones never were.
    assert clips[tiny_corpus.killed_clip].attempts >= 2
    assert tiny_corpus.finished_before_kill
    for clip_id in tiny_corpus.finished_before_kill:
        assert clips[clip_id].attempts == 1


def test_bad_clips_are_refused_with_their_codes(tiny_corpus: TinyCorpus) -> None:
    by_source = {c.source: c for c in clips_of(tiny_corpus)}
    for source, code in tiny_corpus.expected_codes.items():
        clip = by_source[source]
        assert (clip.status, clip.code) == ("refused", code), (source, clip.message)
    assert by_source[tiny_corpus.duplicate].status == "duplicate"
    good = [
        c for s, c in by_source.items()
        if s not in tiny_corpus.expected_codes and s != tiny_corpus.duplicate
    ]  # fmt: skip
    assert len(good) >= 4
    assert all(c.status == "accepted" and c.utterances >= 1 and c.key for c in good)


def test_stored_corpus_is_indexed_and_split_by_identity(tiny_corpus: TinyCorpus) -> None:
    store = build_store(tiny_corpus.settings)
    prefix = f"corpora/{tiny_corpus.name}"
    index = load_index(store.get_bytes(f"{prefix}/corpus.json"))
    good = {c.identity for c in clips_of(tiny_corpus) if c.status == "accepted"}
    splits = {i.id: i.split for i in index.identities}
    assert set(splits) == good
    assert splits["id000"] == "val"
    assert sum(1 for v in splits.values() if v == "train") == len(good) - 1
    stored = set(store.list(f"{prefix}/shards/"))
    assert {f"{prefix}/{s.name}" for s in index.shards} == stored
    assert index.stats["refusals"]  # the refused sources are counted by code
    report = json.loads(store.get_bytes(f"{prefix}/report.json"))
    assert {r["status"] for r in report["clips"]} == {"accepted", "refused", "duplicate"}

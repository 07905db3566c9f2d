"""A shared model through its operator job: killed mid-segment, resumed exactly, versioned."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from services.cli.corpus import _export
from services.corpus.service import CorpusError
from services.models.service import create_model, list_models, resolve_model
from shared.storage import build_store
from talkinghead.families.contract import TrainOptions
from talkinghead.sharedmodels.contract import ReaderSource, SharedModelError
from talkinghead.sharedmodels.registry import get_kind
from tests.fixtures.corpora import TinyCorpus, _job, _owned_by
from tests.fixtures.servers import wait_for
from tests.fixtures.workers import start_worker

CONFIG = {"total_steps": 30, "segment_steps": 10, "batch": 16}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def test_model_job_resumes_exactly_and_is_versioned(
    tiny_corpus: TinyCorpus, tmp_path: Path
) -> None:
    settings = tiny_corpus.settings
    model = create_model(settings, "audio2mouth", tiny_corpus.name, CONFIG)
    assert model.version >= 1

    def second_segment_running() -> bool:
        job = _job(settings, resolve_model(settings, model.id)[1].id)  # type: ignore[union-attr]
        return bool(job.state.get("checkpoint")) and job.lease_owner is not None

    wait_for(second_segment_running, 300, "the model's second segment")
    job = resolve_model(settings, model.id)[1]
    assert job is not None and job.lease_owner
    victim = next(
        w for w in tiny_corpus.workers if w.poll() is None and _owned_by(job.lease_owner, w.pid)
    )
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    tiny_corpus.workers.append(
        start_worker(
            tiny_corpus.env, tiny_corpus.logs / "w3.log", queues="preprocess,train", name="corpus3"
        )
    )
    wait_for(
        lambda: resolve_model(settings, model.id)[1].status in ("ready", "failed"),  # type: ignore[union-attr]
        300,
        "the model job",
    )
    stored, job = resolve_model(settings, model.id)
    assert job is not None and job.status == "ready", (job.error_code, job.error_message)
    assert job.attempts >= 1 and stored.manifest_key

    # The same training uninterrupted, in this process, on the same corpus: same weights.
    corpus_dir = tmp_path / "corpus"
    _export(settings, f"corpora/{tiny_corpus.name}", corpus_dir)
    kind = get_kind("audio2mouth")
    config = kind.config(CONFIG)
    run = kind.open_training(ReaderSource(corpus_dir), tmp_path / "run", config, TrainOptions())
    run.run()
    local = tmp_path / "export"
    local.mkdir()
    kind.export(run, local)
    remote = tmp_path / "remote.pt"
    build_store(settings).download(
        stored.manifest_key.rsplit("/", 1)[0] + "/files/audio2mouth.pt", remote
    )
    mine, theirs = _weights(local / "audio2mouth.pt"), _weights(remote)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)

    # Listed, selected by version, refused when absent.
    listed = list_models(settings, "audio2mouth")
    assert any(m["id"] == model.id and m["status"] == "ready" for m in listed)
    assert resolve_model(settings, f"audio2mouth:{model.version}")[0].id == model.id
    assert resolve_model(settings, "audio2mouth")[0].id == model.id  # latest ready
    with pytest.raises(SharedModelError) as absent:
        resolve_model(settings, "audio2mouth:999")
    assert absent.value.code == "model_not_found"
    with pytest.raises(SharedModelError) as unknown:
        create_model(settings, "no-such-kind", tiny_corpus.name, {})
    assert unknown.value.code == "unknown_model_kind"
    with pytest.raises(CorpusError) as no_corpus:
        create_model(settings, "audio2mouth", "no-such-corpus", {})
    assert no_corpus.value.code == "corpus_not_found"

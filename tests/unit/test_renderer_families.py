"""Renderer families and presets: API validation, dataset sizes, and renders a family lacks."""

from __future__ import annotations

from typing import Any

import pytest

from services.renderer.tasks import render as render_task
from services.trainer.tasks import ProgressReporter
from shared import schemas
from shared.db.models import Avatar, Job
from shared.db.session import session_scope
from talkinghead.families.contract import StepReport
from talkinghead.families.radnerf.config import PRESETS as LIBRARY_PRESETS
from talkinghead.families.registry import get_family
from tests.unit.conftest import Api, Media
from tests.unit.test_api_auth import assert_problem
from tests.unit.test_api_avatars import post_avatar
from tests.unit.test_api_renders import post_render


def test_every_preset_has_a_dataset_size_and_a_training_config() -> None:
    family = get_family("radnerf")
    assert set(family.presets) == set(LIBRARY_PRESETS)
    sizes = {name: p.source_size for name, p in family.presets.items()}
    assert sizes == {"tiny": 128, "cpu-quick": 256, "gpu-standard": 512}
    assert schemas.RENDERERS[:2] == ("radnerf", "meanframe")
    assert set(schemas.PRESETS) >= set(LIBRARY_PRESETS)


@pytest.mark.parametrize("preset", ["tiny", "cpu-quick", "gpu-standard"])
def test_radnerf_with_each_preset_is_accepted(api: Api, media: Media, preset: str) -> None:
    response = post_avatar(api, media, renderer="radnerf", preset=preset)
    assert response.status_code == 202, response.text
    assert (response.json()["renderer"], response.json()["preset"]) == ("radnerf", preset)
    with session_scope(api.settings.database_url) as s:
        row = s.get(Avatar, response.json()["id"])
        assert row is not None and (row.renderer, row.preset) == ("radnerf", preset)


def test_default_renderer_is_radnerf(api: Api, media: Media) -> None:
    avatar = post_avatar(api, media).json()
    assert (avatar["renderer"], avatar["preset"]) == ("radnerf", "cpu-quick")


def test_radnerf_through_an_upload(api: Api, media: Media) -> None:
    slot = api.client.post(
        "/v1/uploads", headers=api.headers, json={"purpose": "video", "size": len(media.video)}
    ).json()
    api.client.put(f"/v1/uploads/{slot['upload_id']}", headers=api.headers, content=media.video)
    body = {"upload_id": slot["upload_id"], "consent": True, "renderer": "radnerf"}
    created = api.client.post("/v1/avatars", headers=api.headers, json={**body, "preset": "tiny"})
    assert created.status_code == 202, created.text
    assert created.json()["renderer"] == "radnerf"


@pytest.mark.parametrize(
    "fields",
    [
        {"renderer": "nerf9000"},
        {"renderer": "RADNERF"},
        {"preset": "huge"},
        {"renderer": "radnerf", "preset": "tiny "},
    ],
)
def test_unknown_renderer_or_preset_is_422(api: Api, media: Media, fields: dict[str, str]) -> None:
    assert_problem(post_avatar(api, media, **fields), 422, "validation_error")
    api.assert_nothing_left()


def test_openapi_lists_the_families_and_presets(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    form = doc["paths"]["/v1/avatars"]["post"]["requestBody"]["content"]["multipart/form-data"]
    props = form["schema"]["properties"]
    assert props["renderer"]["enum"][:2] == ["radnerf", "meanframe"]
    preset = props["preset"]
    enums = [preset.get("enum")] + [alt.get("enum") for alt in preset.get("anyOf", [])]
    assert ["tiny", "cpu-quick", "gpu-standard"] in [e[:3] for e in enums if e]
    assert "tests" in props["preset"]["description"]
    json_props = doc["components"]["schemas"]["AvatarCreate"]["properties"]
    assert json_props["renderer"]["enum"][:2] == ["radnerf", "meanframe"]


def _run_render_step(api: Api, render_id: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the render stage of a render's job in this process, as a worker would."""
    monkeypatch.setattr("services.runner.get_settings", lambda: api.settings)
    with session_scope(api.settings.database_url) as s:
        job = s.query(Job).filter_by(resource_id=render_id).one()
        job_id, step = job.id, job.segment
    outcome: str = render_task(job_id, step)
    return outcome


def _ready(api: Api, media: Media, **fields: str) -> str:
    avatar_id: str = post_avatar(api, media, **fields).json()["id"]
    api.set_job(avatar_id, status="ready", stage="ready", progress=1.0)
    return avatar_id


def test_render_of_a_radnerf_avatar_without_an_export_fails_avatar_not_ready(
    api: Api, media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    avatar_id = _ready(api, media, renderer="radnerf", preset="tiny")
    created = post_render(api, avatar_id, media.audio)
    assert created.status_code == 202, created.text
    assert _run_render_step(api, created.json()["id"], monkeypatch) == "failed"
    got = api.client.get(f"/v1/renders/{created.json()['id']}", headers=api.headers).json()
    assert got["status"] == "failed"
    assert got["error"]["code"] == "avatar_not_ready"
    assert "renderer" in got["error"]["message"]


class _FakeContext:
    """Records what the reporter sends to the job."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.checks = 0

    def check(self) -> None:
        self.checks += 1

    def progress(self, value: float) -> None:
        self.sent.append(value)


def test_progress_is_scaled_throttled_and_losses_averaged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = {"now": 100.0}
    monkeypatch.setattr("services.trainer.tasks.time.monotonic", lambda: clock["now"])
    ctx: Any = _FakeContext()
    reporter = ProgressReporter(ctx, 0.2, 0.9)
    for step in range(1, 101):  # 100 steps in 2 s: at most 5 reports at 0.5 s apart
        clock["now"] += 0.02
        reporter(StepReport(step, 200, "head", {"mse": float(step), "loss": 1.0}))
    assert ctx.checks == 100
    assert 3 <= len(ctx.sent) <= 5
    assert ctx.sent == sorted(ctx.sent) and all(0.2 < p <= 0.55 for p in ctx.sent)
    assert reporter.fraction(200, 200) == pytest.approx(0.9)
    assert reporter.fraction(0, 200) == pytest.approx(0.2)
    # the mean over the last 25 steps (76..100)
    assert reporter.losses() == {"mse": pytest.approx(88.0), "loss": 1.0}
    reporter(StepReport(101, 200, "lips", {"mse": 1.0, "patch_1-ssim": float("nan")}))
    assert set(reporter.losses()) == {"mse"}

"""Library verbs that run the ML core on this machine, with no server: preprocess and train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from services.cli.common import _fail, _print_json, err_console


def preprocess(
    video: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Portrait video.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset directory to write.")],
    size: Annotated[int, typer.Option(min=64, max=2048, help="Square crop side in pixels.")] = 512,
    audio_encoder: Annotated[
        Path | None,
        typer.Option(help="Local HuBERT/wav2vec2 checkpoint dir (default: built-in log-mel)."),
    ] = None,
) -> None:
    """Turn a portrait video into a training dataset (no server needed)."""
    from talkinghead.media import MediaError
    from talkinghead.preprocess.pipeline import PreprocessConfig, preprocess_video

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("preprocess", total=1.0)

        def report(stage: str, fraction: float) -> None:
            progress.update(task, completed=fraction, description=f"preprocess: {stage}")

        try:
            config = PreprocessConfig(
                size=size,
                audio_encoder="pretrained" if audio_encoder else "logmel",
                audio_encoder_path=audio_encoder,
            )
            manifest = preprocess_video(video, out, config, report)
        except MediaError as exc:
            _fail(exc.code, exc.message)
    typer.echo(f"dataset with {manifest.num_frames} frames in {out}")
    _print_json(json.loads((out / "manifest.json").read_text()).get("quality", {}))


def train(
    dataset: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Dataset dir.")],
    workdir: Annotated[Path, typer.Option("--workdir", help="Checkpoint directory.")],
    renderer: Annotated[
        str | None, typer.Option(help="Renderer family (default: the registry's default).")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="The family's preset.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps.")] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Export (and so score) the avatar once training is done.")
    ] = True,
    lpips: Annotated[
        Path | None, typer.Option(help="LPIPS TorchScript file for the lips stage.")
    ] = None,
) -> None:
    """Train an avatar of a video family on a dataset; resumes from the workdir's checkpoint."""
    from talkinghead.families.contract import AvatarSource, FamilyError, TrainOptions
    from talkinghead.families.registry import DEFAULT_FAMILY, UnknownFamily, get_family

    try:
        family = get_family(renderer or DEFAULT_FAMILY)
    except UnknownFamily as exc:
        _fail("unknown_renderer", str(exc))
    if "training" not in family.stages:
        _fail("bad_request", f"{family.name} avatars are not trained")
    source = AvatarSource(dataset=dataset)
    checkpoint = workdir / "family-checkpoint"
    try:
        config = family.config(preset or family.default_preset)
        trainer = family.open_training(
            source, workdir / "run", config, TrainOptions(lpips_path=lpips)
        )
        if checkpoint.exists():
            trainer.load(checkpoint)
    except FamilyError as exc:
        _fail(exc.code, exc.message)
    except ValueError as exc:
        _fail("bad_request", str(exc))
    start = trainer.step
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("train", total=trainer.total_steps, completed=start)

        def report(r: Any) -> None:
            desc = f"train: {r.stage} mse {r.losses.get('mse', 0.0):.4f}"
            progress.update(task, completed=r.step, description=desc)

        ran = trainer.run(steps, report)
    if ran:
        trainer.save(checkpoint)
    typer.echo(f"ran {ran} steps ({start} -> {trainer.step} of {trainer.total_steps})")
    if evaluate and trainer.done:
        try:
            metrics = family.export(source, trainer, workdir / "export", config, {})
        except FamilyError as exc:
            _fail(exc.code, exc.message)
        typer.echo(f"export in {workdir / 'export'}")
        _print_json(metrics)

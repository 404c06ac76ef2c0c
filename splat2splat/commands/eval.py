"""`splat2splat eval`: the field's CLIP metrics for edits, and a report a person can look at.

``splat2splat eval RUN [RUN ...] --source-caption "a photo of a bear" --target-caption "a photo of a grizzly bear"``
renders each edited scene and the original scene it was edited from along one camera path through the
captured views and writes ``eval.json`` + ``eval.md`` with contact sheets (see
:mod:`splat2splat.evaluation.report`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from splat2splat.errors import InputError
from splat2splat.evaluation.clip_metrics import DEFAULT_CLIP_MODEL, DEFAULT_RESIZE, ResizeMode
from splat2splat.evaluation.evaluate import PathKind
from splat2splat.folder_lock import claim_output_folder, release_output_folder
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS, MaxFileGaussians
from splat2splat.io import check_output_folder


@dataclass
class EvalCommand:
    """CLIP text-image direction similarity and direction consistency (Instruct-NeRF2NeRF's metrics, its
    preprocessing by default) of edit runs, beside their PSNR/SSIM figures, with contact sheets of original vs
    edited scene."""

    runs: tyro.conf.Positional[Annotated[tuple[Path, ...], tyro.conf.arg(metavar="RUN [RUN ...]")]]
    """Edit run folders (the --output of `splat2splat edit`), or edited scene files (.pt/.ply) with --original."""
    source_caption: Annotated[str, tyro.conf.arg(help_behavior_hint="(required)")] = ""
    """Caption of the original scene, e.g. "a photo of a bear"."""
    target_caption: Annotated[tuple[str, ...], tyro.conf.arg(help_behavior_hint="(required)")] = ()
    """Caption of the edited scene, e.g. "a photo of a grizzly bear": one for every run, or one per run in the
    order of the runs."""
    output: Path | None = None
    """Folder for eval.json, eval.md and the contact sheets (default: RUN/eval for one run folder, else ./eval)."""
    original: Path | None = None
    """The unedited scene (.pt checkpoint or .ply) for every run, instead of the one each run records
    (its --init, or the initial/checkpoint.pt it trained)."""
    data: Path | None = None
    """The dataset for every run, instead of the one each run records."""
    downscale: int | None = None
    """Image downscale of the renders (default: the run's)."""
    clip_model: str = DEFAULT_CLIP_MODEL
    """CLIP hub id or local transformers folder (CLIPModel + tokenizer + preprocessor_config.json). Without hub
    access, pass a folder or have the model in the HF cache; HF_HUB_OFFLINE=1 is respected."""
    resize: ResizeMode = DEFAULT_RESIZE
    """Image preprocessing: 'in2n' (in2n's metrics script: bicubic squash to 224x224, no crop; what published
    figures use) or 'clip' (CLIPImageProcessor's: bicubic resize of the shortest side, centre crop)."""
    frames: int = 60
    """Frames of the camera path (consecutive frames give the direction consistency)."""
    path: PathKind = "capture"
    """Camera path: 'capture' (through the training views in capture order, interpolated) or 'orbit' (a circle)."""
    sheet_frames: int = 4
    """Path frames (and held-out views) shown in each contact sheet."""
    device: str = "auto"
    """'cuda', 'cpu' or 'auto' for the scenes and CLIP."""
    batch_size: int = 16
    """Images per CLIP forward pass."""
    max_file_gaussians: MaxFileGaussians = MAX_FILE_GAUSSIANS


def check_command(cmd: EvalCommand) -> list[str]:
    """The target caption of every run; missing or inconsistent options are one-line errors."""
    if not cmd.runs:
        raise InputError(None, "give at least one RUN: an edit run folder (or an edited scene file with --original)")
    if not cmd.source_caption.strip():
        raise InputError(None, "--source-caption is required: a caption of the original scene, e.g. "
                               "\"a photo of a bear\" (CLIP direction similarity compares it with --target-caption)")
    captions = [caption for caption in cmd.target_caption if caption.strip()]
    if not captions:
        raise InputError(None, "--target-caption is required: a caption of the edited scene, e.g. "
                               "\"a photo of a grizzly bear\"")
    if len(captions) not in (1, len(cmd.runs)):
        raise InputError(None, f"give one --target-caption for all runs or one per run: {len(captions)} captions "
                               f"for {len(cmd.runs)} runs")
    for name, value in (("--frames", cmd.frames), ("--sheet-frames", cmd.sheet_frames), ("--batch-size", cmd.batch_size)):
        if value < 1:
            raise InputError(None, f"{name} must be at least 1, got {value}")
    if cmd.downscale is not None and cmd.downscale < 1:
        raise InputError(None, f"--downscale must be at least 1, got {cmd.downscale}")
    return captions * len(cmd.runs) if len(captions) == 1 else captions


def default_output(cmd: EvalCommand) -> Path:
    if cmd.output is not None:
        return cmd.output
    if len(cmd.runs) == 1 and cmd.runs[0].is_dir():
        return cmd.runs[0] / "eval"
    return Path("eval")


def run(cmd: EvalCommand) -> dict:
    """Evaluate every run and write the report; returns eval.json's content."""
    from splat2splat.devices import resolve_device
    from splat2splat.evaluation.clip_metrics import load_clip
    from splat2splat.evaluation.evaluate import evaluate_targets
    from splat2splat.evaluation.report import report_header, summary_line, write_report
    from splat2splat.evaluation.runs import locate_target, unique_names

    started = time.perf_counter()
    captions = check_command(cmd)
    device = str(resolve_device(cmd.device))
    targets = unique_names([locate_target(run, cmd.original, cmd.data, cmd.downscale) for run in cmd.runs])
    output = default_output(cmd)
    check_output_folder(output)  # before any work: a folder that cannot hold the report, or that another run
    claim_output_folder(output)  # is writing into, fails now
    encoder = load_clip(cmd.clip_model, device, cmd.resize, cmd.batch_size)  # after the cheap checks of the runs
    evaluated = evaluate_targets(targets, captions, cmd.source_caption, encoder, cmd.frames, cmd.path, device,
                                 cmd.sheet_frames, cmd.max_file_gaussians)
    header = report_header(encoder, cmd.source_caption, cmd.path, cmd.frames, device, time.perf_counter() - started)
    record = write_report(output, evaluated, header)
    for run in record["runs"]:
        print(summary_line(run))
    failed = record.get("failed_outputs", {})
    written = [name for name in ("eval.md", "eval.json") if name not in failed]
    print(f"wrote {' and '.join(str(output / name) for name in written) or 'no report'} in {output}"
          + (f" ({len(failed)} output(s) not written, see the warnings above)" if failed else ""))
    release_output_folder(output)
    return record

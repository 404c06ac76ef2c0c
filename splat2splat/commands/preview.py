"""``splat2splat preview``: try an instruction on a few dataset images before editing the 3D scene.

Writes into ``--output``: ``preview.png`` (rows = views, columns original | edited, and with ``--region.*``
a third column showing the region; the edited column is then composited into the original as the local edit
does), ``sweep.png`` when
guidance scales are swept (rows = text guidance, columns = image guidance, on the first view) and
``preview.json`` (the prompt, every setting and the seconds taken).

``--3d`` then runs a short, low-resolution 3D edit (the in2n-tiny preset on downscaled images, few steps, the
same editor) into ``--output/3d``: scene PLY, turntable, before/after sheet.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated

import tyro
from rich.progress import Progress

from splat2splat.edit.ip2p import IP2PConfig
from splat2splat.edit.ip2p_steps import check_noise_range
from splat2splat.edit.job import EditJob, run_edit_job
from splat2splat.edit.presets import preset
from splat2splat.edit.regions import RegionConfig, composite, feathered, preview_masks, region_overlay
from splat2splat.edit.preview import (EditorFactory, IP2PEditorFactory, edit_original, representative_views,
                                      sweep_grid)
from splat2splat.errors import InputError
from splat2splat.folder_lock import claim_output_folder
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS, MaxFileGaussians
from splat2splat.io import check_output_folder, save_image, write_json
from splat2splat.media import contact_sheet


@dataclass
class Preview3D:
    """The short 3D edit of ``preview --3d``: in2n-tiny (no LPIPS) on smaller images with fewer steps."""

    downscale: int = 2
    """Extra image downscale on top of --downscale."""
    init_steps: int = 500
    """Training steps of the initial (unedited) scene."""
    steps: int = 300
    """Editing steps."""
    edit_rate: int = 5
    """Steps between single-view edits (in2n uses 10; more edits per step converge sooner)."""
    turntable_frames: int = 30
    """Frames of the turntable video."""


@dataclass
class PreviewCommand:
    """Preview a text instruction as 2D InstructPix2Pix edits of a few dataset views (and sweep guidance scales)."""

    data: Path
    """Dataset folder (nerfstudio transforms.json, COLMAP sparse model or Blender transforms_*.json)."""
    prompt: str
    """The editing instruction, e.g. "Turn the sphere into a glass ball"."""
    output: Path = Path("outputs/preview")
    """Folder for preview.png, sweep.png and preview.json."""
    views: int = 4
    """Number of views to edit, spread over the training cameras (farthest-point sampling of their centres)."""
    model: str | None = None
    """InstructPix2Pix hub id or local pipeline folder (as edit --model; shortcut for --editor.model)."""
    device: str = "auto"
    """Device of the editor and the --3d scene: cuda, cuda:N, cpu or auto (cuda when available);
    --editor.device overrides it for the editor."""
    editor: IP2PConfig = field(default_factory=IP2PConfig)
    """The InstructPix2Pix editor (as edit --idu.editor.*)."""
    noise_range: tuple[float, float] = (0.98, 0.98)
    """Noise level range (fractions of the diffusion timesteps) the edit starts from. The render IS the original
    here, so a low level would return it nearly unchanged; the default starts from (almost) pure noise, as
    plain InstructPix2Pix does, to show what the instruction does. The IDU itself uses (0.02, 0.98)."""
    guidance_scales: tuple[float, ...] = ()
    """Text guidance scales to sweep on the first view (sweep.png rows); empty: only the editor's scale."""
    image_guidance_scales: tuple[float, ...] = ()
    """Image guidance scales to sweep on the first view (sweep.png columns); empty: only the editor's scale."""
    seed: int = 0
    """Seed of every edit (each edit starts from it, so sweep cells differ only in their scales)."""
    allow_paths_outside_data: bool = False
    """Follow image, mask and point-cloud paths of the dataset that lead outside its folder (refused by default:
    a dataset from elsewhere must not make the program read arbitrary files)."""
    downscale: int = 1
    """Image downscale factor of the dataset."""
    three_d: Annotated[bool, tyro.conf.arg(name="3d")] = False
    """Also run a short low-resolution 3D edit (Iterative Dataset Update) into OUTPUT/3d: PLY + turntable."""
    fast: Preview3D = field(default_factory=lambda: Preview3D())
    """Settings of the --3d edit."""
    region: RegionConfig = field(default_factory=RegionConfig)
    """A local edit's region (as `edit --region.*`): preview.png gets a third column showing it, and --3d edits
    only inside it."""
    max_file_gaussians: MaxFileGaussians = MAX_FILE_GAUSSIANS


def sweep_scales(cmd: PreviewCommand) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(text scales, image scales) of the sweep grid, or None without a sweep; an unswept axis keeps the editor's."""
    if not cmd.guidance_scales and not cmd.image_guidance_scales:
        return None
    return (cmd.guidance_scales or (cmd.editor.guidance_scale,),
            cmd.image_guidance_scales or (cmd.editor.image_guidance_scale,))


def with_shortcuts(cmd: PreviewCommand) -> PreviewCommand:
    """``cmd`` with --model and --device applied to the editor, as edit does: --model wins over --editor.model,
    --editor.device over --device."""
    return replace(cmd, editor=replace(cmd.editor, model=cmd.model or cmd.editor.model,
                                       device=cmd.editor.device or cmd.device))


def check_preview(cmd: PreviewCommand) -> None:
    if not cmd.prompt.strip():
        raise InputError(None, "the prompt is empty: say what the edit should do")
    if cmd.views < 1:
        raise InputError(None, f"--views must be at least 1, got {cmd.views}")
    check_noise_range(cmd.noise_range)


def free_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever does not exist yet: earlier previews are kept."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def quick_edit_job(cmd: PreviewCommand) -> EditJob:
    """The edit of --3d: in2n-tiny's loss and schedule, shortened, with the preview's editor settings."""
    fast = cmd.fast
    idu = replace(preset("in2n-tiny"), steps=fast.steps, edit_rate=fast.edit_rate, editor=cmd.editor, seed=cmd.seed)
    if cmd.region.given():  # the short initial training ends inside the densification window, which a
        idu = replace(idu, density_control="off")  # local edit cannot continue (it acts on every Gaussian)
    return EditJob(data=cmd.data, prompt=cmd.prompt, preset="in2n-tiny", output=free_folder(cmd.output / "3d"),
                   init_steps=fast.init_steps, device=cmd.device, downscale=cmd.downscale * fast.downscale,
                   checkpoint_every=0, eval_every=0, turntable_frames=fast.turntable_frames, idu=idu,
                   region=cmd.region, max_file_gaussians=cmd.max_file_gaussians)


def run(cmd: PreviewCommand, make_editor: EditorFactory | None = None) -> dict:
    """Edit representative views (and the sweep grid); write the sheets and preview.json; return its content."""
    from splat2splat.data.readers import load_dataset

    check_preview(cmd)
    cmd = with_shortcuts(cmd)
    started = time.perf_counter()
    dataset = load_dataset(cmd.data, downscale=cmd.downscale, allow_outside_paths=cmd.allow_paths_outside_data)
    views = representative_views(dataset, cmd.views)
    # The region shows before any edit or 3D work: a wrong box is seen in seconds.
    masks = preview_masks(cmd.region, dataset, views, cmd.downscale, cmd.max_file_gaussians) \
        if cmd.region.given() else None
    scales = sweep_scales(cmd)
    make_editor = make_editor or IP2PEditorFactory()
    editor = make_editor(cmd.editor)
    check_output_folder(cmd.output)  # before any edit: a folder that cannot hold the sheets fails now
    claim_output_folder(cmd.output)
    n_edits = len(views) + (len(scales[0]) * len(scales[1]) if scales else 0)
    with Progress() as progress:
        task = progress.add_task("edit", total=n_edits)
        edited = []
        for view in views:
            edited.append(edit_original(editor, dataset, view, cmd.prompt, cmd.noise_range, cmd.seed))
            progress.advance(task)
        sweep = None if scales is None else sweep_grid(make_editor, cmd.editor, dataset, views[0], cmd.prompt,
                                                       cmd.noise_range, cmd.seed, *scales,
                                                       advance=lambda: progress.advance(task))

    if masks is not None:  # as the local edit composites each edit into the original
        edited = [composite(image, dataset.original(v), feathered(mask, cmd.region.feather))
                  for v, image, mask in zip(views, edited, masks)]
    rows = [[dataset.original(v), image] for v, image in zip(views, edited)]
    if masks is not None:
        rows = [[*row, region_overlay(dataset.original(v), mask)] for row, v, mask in zip(rows, views, masks)]
    save_image(cmd.output / "preview.png", contact_sheet(
        rows, row_labels=[dataset.image_names[v] for v in views],
        column_labels=["original", "edited", *(["region"] if masks is not None else [])]))
    if sweep is not None:
        save_image(cmd.output / "sweep.png", sweep)
    summary = {
        "prompt": cmd.prompt,
        "data": str(cmd.data),
        "views": [dataset.image_names[v] for v in views],
        "noise_range": list(cmd.noise_range),
        "seed": cmd.seed,
        "downscale": cmd.downscale,
        "editor": asdict(cmd.editor),
        "sweep": None if scales is None else {"guidance_scales": list(scales[0]),
                                               "image_guidance_scales": list(scales[1]),
                                               "view": dataset.image_names[views[0]]},
        "edits": n_edits,
        "region": {name: str(getattr(cmd.region, name)) for name in cmd.region.given()} or None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if cmd.three_d:
        started_3d = time.perf_counter()
        job = quick_edit_job(cmd)
        record = run_edit_job(job, editor=editor)
        summary["three_d"] = {"output": str(job.output), "seconds": round(time.perf_counter() - started_3d, 3),
                              "edits": record["edits"], "files": record["files"]}
    write_json(cmd.output / "preview.json", summary)
    print(f"{n_edits} 2D edits in {summary['seconds']:.1f} s; wrote {cmd.output}")
    return summary

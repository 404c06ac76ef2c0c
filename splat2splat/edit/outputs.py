"""What a finished edit leaves in its run folder: the scene export, the edited images, a before/after sheet,
a turntable video and ``run.json`` (prompt, every setting, seeds, versions, timings, metrics). Each is written
independently: one that fails is a warning line and a ``failed_outputs`` entry of run.json, the others land."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from splat2splat.backends import config_for
from splat2splat.configs import config_to_dict
from splat2splat.data.dataset import Dataset
from splat2splat.edit.presets import preset
from splat2splat.io import IndependentOutputs, save_image, write_json
from splat2splat.media import contact_sheet, evenly_spread, render_turntable, write_video
from splat2splat.runner import LoopReport
from splat2splat.scene import SceneBackend

if TYPE_CHECKING:
    from splat2splat.edit.job import EditRun


def write_edit_outputs(run: EditRun, report: LoopReport) -> dict:
    """Scene export, edited images, before/after sheet, turntable and run.json; returns run.json's content."""
    job, dataset, backend = run.job, run.dataset, run.backend
    start = time.perf_counter()
    outputs = IndependentOutputs()
    files = list(outputs.write("scene export", lambda: backend.export(job.output, dataset)) or [])
    outputs.write("edited images", lambda: write_edited_images(job.output / "edited", dataset))
    files.append(outputs.write("before_after.png",
                               lambda: write_before_after(job.output / "before_after.png", backend, dataset)))
    if job.turntable_frames > 0:
        video = job.output / f"turntable.{job.video_format}"
        files.append(outputs.write(video.name, lambda: write_video(
            video, render_turntable(backend, dataset, job.turntable_frames))))
    final = outputs.write("final metrics", run.idu.evaluate)
    io_seconds = time.perf_counter() - start
    record = {
        "prompt": job.prompt, "preset": job.preset, "backend": backend.name, "command": config_to_dict(job),
        "preset_settings": config_to_dict(preset(job.preset)),  # the preset as defined, before any override
        "seeds": {"idu": job.idu.seed, "scene": config_for(backend.name, job).seed},
        "versions": software_versions(), "steps": run.idu.step, "scene_steps": backend.step,
        "edits": run.idu.edits_done, "views_edited": run.idu.views_edited(),
        "views": len(dataset.train_indices), "metrics": final, "last_step": report.last_stats,
        "history": report.evaluations,
        "seconds": {**run.idu.timings(), "checkpoint": report.seconds["checkpoint"], "eval": report.seconds["eval"],
                    "outputs": io_seconds, "this_session": time.perf_counter() - run.started},
        "files": [str(f) for f in files if f is not None],
    }
    if outputs.failed:
        record["failed_outputs"] = outputs.failed
    write_json(job.output / "run.json", record)
    print(f"edited {record['views_edited']}/{record['views']} views ({record['edits']} edits); wrote {job.output}")
    return record


def write_edited_images(folder: Path, dataset: Dataset) -> None:
    for index in dataset.train_indices:
        save_image(folder / f"{Path(dataset.image_names[index]).stem}.png", dataset.current[index])


def write_before_after(path: Path, backend: SceneBackend, dataset: Dataset, n_views: int = 4) -> Path:
    """Rows of original | edited training image | render of the edited scene, for views spread over the dataset."""
    views = [dataset.train_indices[k] for k in evenly_spread(len(dataset.train_indices), n_views)]
    renders = backend.render(dataset.cameras[views])
    rows = [[dataset.original(v), dataset.current[v], r] for v, r in zip(views, renders)]
    sheet = contact_sheet(rows, row_labels=[Path(dataset.image_names[v]).stem for v in views],
                          column_labels=["original", "edited image", "edited scene"])
    save_image(path, sheet)
    return path


def software_versions() -> dict[str, str]:
    import diffusers
    import gsplat

    import splat2splat

    return {"python": platform.python_version(), "torch": torch.__version__, "gsplat": gsplat.__version__,
            "diffusers": diffusers.__version__, "splat2splat": splat2splat.__version__,
            "cuda": torch.version.cuda or "none", "platform": platform.platform()}

"""What a finished edit leaves in its run folder: the scene export, the edited images, a before/after sheet,
a turntable video and ``run.json`` (prompt, every setting, seeds, versions, timings, metrics)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from splat2splat.backends import config_for
from splat2splat.configs import config_to_dict
from splat2splat.data.dataset import Dataset
from splat2splat.edit.presets import preset
from splat2splat.io import save_image, write_json
from splat2splat.media import contact_sheet, evenly_spread, render_turntable, write_video
from splat2splat.runner import LoopReport
from splat2splat.scene import SceneBackend
from splat2splat.versions import software_versions

if TYPE_CHECKING:
    from splat2splat.edit.job import EditRun


def write_edit_outputs(run: EditRun, report: LoopReport) -> dict:
    """Scene export, edited images, before/after sheet, turntable and run.json; returns run.json's content."""
    job, dataset, backend = run.job, run.dataset, run.backend
    start = time.perf_counter()
    files = backend.export(job.output, dataset)
    for index in dataset.train_indices:
        save_image(job.output / "edited" / f"{Path(dataset.image_names[index]).stem}.png", dataset.current[index])
    files.append(write_before_after(job.output / "before_after.png", backend, dataset))
    if job.turntable_frames > 0:
        frames = render_turntable(backend, dataset, job.turntable_frames)
        files.append(write_video(job.output / f"turntable.{job.video_format}", frames))
    final = run.idu.evaluate()
    io_seconds = time.perf_counter() - start
    record = {
        "prompt": job.prompt, "preset": job.preset, "backend": backend.name, "command": config_to_dict(job),
        "preset_settings": config_to_dict(preset(job.preset)),  # the preset as defined, before any override
        "seeds": {"idu": job.idu.seed, "scene": config_for(backend.name, job).seed},
        "edit_order": list(run.idu.edit_order),  # the views in the order they are edited (cycling)
        "versions": software_versions(), "steps": run.idu.step, "scene_steps": backend.step,
        "edits": run.idu.edits_done, "views_edited": run.idu.views_edited(),
        "views": len(dataset.train_indices), "metrics": final, "last_step": report.last_stats,
        "history": report.evaluations,
        "seconds": {**run.idu.timings(), "checkpoint": report.seconds["checkpoint"], "eval": report.seconds["eval"],
                    "outputs": io_seconds, "this_session": time.perf_counter() - run.started},
        "files": [str(f) for f in files],
    }
    write_json(job.output / "run.json", record)
    print(f"edited {record['views_edited']}/{record['views']} views ({record['edits']} edits); wrote {job.output}")
    return record


def write_before_after(path: Path, backend: SceneBackend, dataset: Dataset, n_views: int = 4) -> Path:
    """Rows of original | edited training image | render of the edited scene, for views spread over the dataset."""
    views = [dataset.train_indices[k] for k in evenly_spread(len(dataset.train_indices), n_views)]
    renders = backend.render(dataset.cameras[views])
    rows = [[dataset.original(v), dataset.current[v], r] for v, r in zip(views, renders)]
    sheet = contact_sheet(rows, row_labels=[Path(dataset.image_names[v]).stem for v in views],
                          column_labels=["original", "edited image", "edited scene"])
    save_image(path, sheet)
    return path

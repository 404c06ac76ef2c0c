"""What a finished edit leaves in its run folder: the scene export, the edited images, a before/after sheet,
a turntable video and ``run.json`` (prompt, every setting, seeds, versions, timings, metrics). Each is written
independently: one that fails is a warning line and a ``failed_outputs`` entry of run.json, the others land.

It takes plain values, the finished scene, its dataset and the run's record, so it needs nothing of the edit job.
"""

from __future__ import annotations

import time
from pathlib import Path

from splat2splat.data.dataset import Dataset
from splat2splat.io import IndependentOutputs, save_image, write_json
from splat2splat.media import contact_sheet, evenly_spread, render_turntable, write_video
from splat2splat.scene import SceneBackend


def write_edit_outputs(output: Path, backend: SceneBackend, dataset: Dataset, record: dict, turntable_frames: int,
                       video_format: str, started: float) -> dict:
    """Scene export, edited images, before/after sheet, turntable and run.json; returns run.json's content.

    ``record``: run.json's content but the files written here and the time they took; ``started``: when this
    session of the run began (``time.perf_counter()``)."""
    start = time.perf_counter()
    outputs = IndependentOutputs()
    files = list(outputs.write("scene export", lambda: backend.export(output, dataset)) or [])
    outputs.write("edited images", lambda: write_edited_images(output / "edited", dataset))
    files.append(outputs.write("before_after.png",
                               lambda: write_before_after(output / "before_after.png", backend, dataset)))
    if turntable_frames > 0:
        video = output / f"turntable.{video_format}"
        files.append(outputs.write(video.name, lambda: write_video(
            video, render_turntable(backend, dataset, turntable_frames))))
    seconds = {**record.get("seconds", {}), "outputs": time.perf_counter() - start,
               "this_session": time.perf_counter() - started}
    record = {**record, "seconds": seconds, "files": [str(f) for f in files if f is not None]}
    if outputs.failed:
        record["failed_outputs"] = outputs.failed
    write_json(output / "run.json", record)
    print(f"edited {record['views_edited']}/{record['views']} views ({record['edits']} edits); wrote {output}")
    return record


def write_edited_images(folder: Path, dataset: Dataset) -> None:
    """The views edited at least once; the others are the originals, unchanged."""
    for index in dataset.train_indices:
        if dataset.edit_counts[index] > 0:
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

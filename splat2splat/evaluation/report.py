"""The files of an evaluation: ``eval.json`` (every number), ``eval.md`` (a table and contact sheets).

Output folder::

    eval.json                 CLIP model, captions, path, versions; per run its CLIP numbers (means and per
                              frame), held-out figures and the run's own PSNR metrics
    eval.md                   one table comparing the runs, then each run's contact sheets
    sheets/NAME.png           original vs edited scene, a few frames of the camera path
    sheets/NAME-heldout.png   held-out photo | original scene | edited scene
    sheets/comparison.png     original | every run, when all runs share one original scene
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from splat2splat.evaluation.clip_metrics import ClipEncoder
from splat2splat.evaluation.evaluate import CLIP_METRICS, EditEvaluation, EvaluatedEdit
from splat2splat.evaluation.runs import EvalTarget
from splat2splat.gaussians.formats.common import MAX_FILE_GAUSSIANS
from splat2splat.io import IndependentOutputs
from splat2splat.versions import software_versions

SHEETS = "sheets"


def report_header(encoder: ClipEncoder, source_caption: str, path: str, frames: int, device: str,
                  seconds: float) -> dict:
    """eval.json's settings: the CLIP model and its preprocessing, the source caption and the camera path."""
    return {"clip_model": encoder.name, "preprocessing": dataclasses.asdict(encoder.preprocessing),
            "source_caption": source_caption, "path": path, "frames": frames, "device": device, "seconds": seconds}


def summary_line(run: dict) -> str:
    clip = run["clip"]
    return (f"{run['name']}: CLIP direction similarity {_number(clip['direction_similarity'], 4)}, "
            f"direction consistency {_number(clip['direction_consistency'], 4)} (in2n's), "
            f"edit direction consistency {_number(clip['edit_direction_consistency'], 4)}")


def write_sheets(output: Path, evaluated: list[EvaluatedEdit],
                 outputs: IndependentOutputs) -> dict[str, dict[str, str]]:
    """Contact sheets of every run (and a comparison of all when they share an original), each written on its
    own (one that fails is in ``outputs.failed``, the others land); the paths written, by run name."""
    from splat2splat.io import save_image
    from splat2splat.media import contact_sheet

    def sheet(path: Path, rows, labels, columns) -> bool:
        outputs.write(str(path), lambda: save_image(output / path, contact_sheet(rows, labels, columns)))
        return str(path) not in outputs.failed

    files: dict[str, dict[str, str]] = {}
    for result in evaluated:
        name = result.target.name
        files[name] = {}
        path = Path(SHEETS) / f"{name}.png"
        if sheet(path, result.path_rows, result.path_labels, ["original scene", "edited scene"]):
            files[name]["sheet"] = str(path)
        path = Path(SHEETS) / f"{name}-heldout.png"
        if result.heldout_rows and sheet(path, result.heldout_rows, result.heldout_labels,
                                         ["held-out photo", "original scene", "edited scene"]):
            files[name]["heldout_sheet"] = str(path)
    if len(evaluated) > 1 and len({result.original_key for result in evaluated}) == 1:
        rows = [[evaluated[0].path_rows[r][0], *(result.path_rows[r][1] for result in evaluated)]
                for r in range(len(evaluated[0].path_rows))]
        path = Path(SHEETS) / "comparison.png"
        if sheet(path, rows, evaluated[0].path_labels, ["original", *(result.target.name for result in evaluated)]):
            files["_comparison"] = {"sheet": str(path)}
    return files


def write_report(output: Path, evaluated: list[EvaluatedEdit], header: dict) -> dict:
    """Write the sheets, eval.md and eval.json into ``output``, each on its own: one that fails is reported in
    one line (and under "failed_outputs" in eval.json), the others still land. Returns eval.json's content."""
    from splat2splat.io import write_bytes, write_json

    output = Path(output)
    outputs = IndependentOutputs()
    files = write_sheets(output, evaluated, outputs)
    record = {**header, "versions": software_versions(),
              "runs": [{**result.numbers, "files": files[result.target.name]} for result in evaluated]}
    if "_comparison" in files:
        record["comparison_sheet"] = files["_comparison"]["sheet"]
    outputs.write("eval.md", lambda: write_bytes(output / "eval.md", markdown(record).encode("utf-8")))
    if outputs.failed:
        record["failed_outputs"] = outputs.failed
    outputs.write("eval.json", lambda: write_json(output / "eval.json", record))
    return record


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(record: dict) -> list[str]:
    """The comparison table: one row per run."""
    lines = ["| run | target caption | CLIP direction similarity | CLIP direction consistency | CLIP edit direction "
             "consistency | held-out: CLIP direction similarity (photo → edited scene) | held-out PSNR / SSIM (edited "
             "scene vs photo) | run.json: PSNR to edited images | run.json: held-out PSNR to original |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in record["runs"]:
        clip, heldout, metrics = run["clip"], run["heldout"] or {}, run["run_metrics"]
        lines.append(
            f"| {_cell(run['name'])}{'' if run['finished'] else ' (unfinished)'} | {_cell(run['target_caption'])} "
            f"| {_number(clip['direction_similarity'], 4)} | {_number(clip['direction_consistency'], 4)} "
            f"| {_number(clip['edit_direction_consistency'], 4)} "
            f"| {_number(heldout.get('clip_direction_similarity'), 4)} "
            f"| {_number(heldout.get('edited_psnr'), 2)} / {_number(heldout.get('edited_ssim'), 3)} "
            f"| {_number(metrics.get('psnr_to_edited'), 2)} | {_number(metrics.get('heldout_psnr_to_original'), 2)} |")
    return lines


def markdown(record: dict) -> str:
    run = record["runs"][0]
    lines = [
        "# splat2splat eval", "",
        f"CLIP model `{record['clip_model']}` (resize: {record['preprocessing']['resize']}); source caption "
        f"\"{record['source_caption']}\"; camera path: {record['path']} with {run['path']['frames']} frames at "
        f"{run['path']['width']}×{run['path']['height']} px.", "",
        "CLIP direction similarity: cos(E(e_i) − E(o_i), E(target caption) − E(source caption)), mean over frames i; "
        "CLIP direction consistency: cos(E(o_i+1) − E(o_i), E(e_i+1) − E(e_i)) of consecutive frames, o original and "
        "e edited renders (Instruct-NeRF2NeRF's two metrics; higher is better). CLIP edit direction consistency: "
        "cos(ΔI_i, ΔI_i+1), ΔI = E(e) − E(o) (not in2n's; 0 for an unedited scene). They compare with published "
        "figures only for the same CLIP model, preprocessing, captions, scenes and path.", "",
        *table(record), "",
    ]
    if "comparison_sheet" in record:
        lines += ["## All runs", "", f"![original and every edit along the path]({record['comparison_sheet']})", ""]
    for run in record["runs"]:
        lines += [f"## {run['name']}", "", f"Prompt: {run['prompt'] or '–'}. Edited scene `{run['edited_scene']}`, "
                  f"original `{run['original_scene']}`, data `{run['data']}` (downscale {run['downscale']}).", "",
                  *([f"![original vs edited along the path]({run['files']['sheet']})", ""]
                    if "sheet" in run["files"] else [])]
        if "heldout_sheet" in run["files"]:
            lines += [f"![held-out views]({run['files']['heldout_sheet']})", ""]
    return "\n".join(lines)


def add_eval_to_run(record: dict, target: EvalTarget, config: EditEvaluation, encoder: ClipEncoder,
                    device: str, max_gaussians: int = MAX_FILE_GAUSSIANS) -> dict:
    """The hook of ``splat2splat edit --eval.captions SRC TGT``: evaluate the finished run ``target`` (built by the
    edit, in memory), write its report into its folder's ``eval/`` and add the numbers to its run.json
    (``record``, returned updated)."""
    import time

    from splat2splat.evaluation.evaluate import evaluate_targets
    from splat2splat.folder_lock import claim_output_folder, release_output_folder
    from splat2splat.io import check_output_folder, write_json

    started = time.perf_counter()
    folder, (source, caption) = Path(target.run_folder), config.captions
    check_output_folder(folder / "eval")  # an `eval RUN` writing its report there now is refused, not interleaved
    claim_output_folder(folder / "eval")
    evaluated = evaluate_targets([target], [caption], source, encoder, config.frames, "capture", device,
                                 max_gaussians=max_gaussians)
    report = write_report(folder / "eval", evaluated,
                          report_header(encoder, source, "capture", config.frames, device, time.perf_counter() - started))
    run = report["runs"][0]
    record = {**record, "eval": {"clip_model": report["clip_model"], "source_caption": source, "target_caption": caption,
                                 "path": "capture", "frames": config.frames, "resize": config.resize,
                                 "clip": {key: run["clip"][key] for key in CLIP_METRICS},
                                 "heldout": run["heldout"], "report": str(folder / "eval" / "eval.md")}}
    release_output_folder(folder / "eval")
    write_json(folder / "run.json", record)
    print(summary_line(run))
    return record

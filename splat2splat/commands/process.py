"""``splat2splat process``: a folder of photos or a video -> a posed nerfstudio dataset (:mod:`splat2splat.sfm`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from splat2splat.sfm.process import ProcessConfig, process
from splat2splat.sfm.report import summary_lines


@dataclass
class ProcessCommand(ProcessConfig):
    """Find the camera poses of photos or video frames with COLMAP (pycolmap) and write a dataset that
    `train` and `edit` read (nerfstudio format, undistorted), with a report of which views registered."""

    resume: bool = False
    """Continue the run into --output that Ctrl-C, SIGTERM or a crash stopped: its finished stages (frames,
    features, matches, model, undistortion) are kept, the rest run. Options a finished stage used cannot change
    (refused); those of the stages still to run (e.g. --mapper after matching), --threads and --verbose can."""


def run(cmd: ProcessCommand) -> dict:
    config = ProcessConfig(**{f.name: getattr(cmd, f.name) for f in fields(ProcessConfig)})
    result = process(config, resume=cmd.resume)
    for line in summary_lines(result):
        print(line)
    print(f"dataset written to {cmd.output} (report: process.json, frames.png, camera_path.png); next: "
          f"splat2splat train --data {cmd.output}")
    return result

"""``splat2splat process``: a folder of photos or a video -> a posed nerfstudio dataset (:mod:`splat2splat.sfm`)."""

from __future__ import annotations

from dataclasses import dataclass

from splat2splat.sfm.process import ProcessConfig, process
from splat2splat.sfm.report import summary_lines


@dataclass
class ProcessCommand(ProcessConfig):
    """Find the camera poses of photos or video frames with COLMAP (pycolmap) and write a dataset that
    `train` and `edit` read (nerfstudio format, undistorted), with a report of which views registered."""


def run(cmd: ProcessCommand) -> dict:
    result = process(cmd)
    for line in summary_lines(result):
        print(line)
    print(f"dataset written to {cmd.output} (report: process.json, frames.png, camera_path.png); next: "
          f"splat2splat train --data {cmd.output}")
    return result

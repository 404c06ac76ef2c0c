"""Pieces of the pycolmap stages that need no reconstruction: progress from COLMAP's log, matching choice,
refusals."""

from __future__ import annotations

import pytest

from splat2splat.errors import InputError
from splat2splat.sfm import reconstruct
from splat2splat.sfm.reconstruct import SfmSettings


def test_progress_comes_from_the_running_stages_log_lines_only(tmp_path):
    log = reconstruct.ColmapLog(tmp_path, verbose=False)
    path = tmp_path / "colmap.log.20260101-000000.1"
    path.write_bytes(b"I feature_extraction.cc:270] Processed file [40/40]\n")
    assert log.counter(40) == (40, 40)
    log.mark()  # matching starts: the extraction's counter no longer counts
    assert log.counter(40) == (0, 40)
    with open(path, "ab") as f:
        f.write(b"I pairing.cc:562] Processing image [10/40]\n")
    assert log.counter(40) == (10, 40)
    with open(path, "ab") as f:
        f.write(b"I pairing.cc:300] Processing block [2/4, 3/4]\n")  # exhaustive: blocks of images
    assert log.counter(40) == (round((4 + 3) / 16 * 40), 40)


def test_auto_matching_is_sequential_for_video_and_many_photos():
    auto = SfmSettings()
    assert reconstruct.matching_for(auto, 40, from_video=False) == "exhaustive"
    assert reconstruct.matching_for(auto, 40, from_video=True) == "sequential"
    assert reconstruct.matching_for(auto, reconstruct.EXHAUSTIVE_LIMIT + 1, from_video=False) == "sequential"
    assert reconstruct.matching_for(SfmSettings(matching="exhaustive"), 500, from_video=True) == "exhaustive"


def test_registration_refusals_say_what_to_try(tmp_path):
    with pytest.raises(InputError, match="registered 12 of 80 views; try --matching exhaustive or more overlap"):
        reconstruct.check_registration(12, 500, 80, "sequential", tmp_path)
    with pytest.raises(InputError, match="registered 12 of 80 views; try more overlap"):
        reconstruct.check_registration(12, 500, 80, "exhaustive", tmp_path)
    with pytest.raises(InputError, match="no two views could be matched"):
        reconstruct.check_registration(3, 0, 3, "exhaustive", tmp_path)
    reconstruct.check_registration(40, 500, 80, "exhaustive", tmp_path)  # half is enough

"""InputError: always one line, naming the file."""

from __future__ import annotations

from pathlib import Path

from splat2splat.errors import InputError


def test_problem_and_path_stay_on_one_line():
    error = InputError(Path("data/images") / "frame\n1.png", "image file\nis missing")
    assert str(error) == "'data/images/frame\\n1.png': image file is missing"
    assert str(InputError("data/ok.png", "bad")) == "data/ok.png: bad" and str(InputError(None, "bad")) == "bad"

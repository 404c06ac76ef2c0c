"""Dataset readers. :func:`load_dataset` detects the format of a folder and returns a :class:`Dataset`."""

from __future__ import annotations

from pathlib import Path

from splat2splat.data.dataset import Dataset, RawScene, build_dataset
from splat2splat.errors import InputError
from splat2splat.io import exists, is_file


def read_raw_scene(path: str | Path, downscale: int = 1, allow_outside_paths: bool = False) -> RawScene:
    """Detect the format of ``path`` and parse its metadata.

    ``allow_outside_paths``: follow file paths in the dataset that lead out of its folder (refused by default:
    a downloaded dataset must not make us read arbitrary files).
    """
    path = Path(path)
    if not exists(path):
        raise InputError(path, "dataset path does not exist")
    from splat2splat.data.readers.nerfstudio import read_nerfstudio

    if is_file(path) and path.suffix == ".json":
        return read_nerfstudio(path, downscale, allow_outside_paths)
    if (path / "transforms.json").is_file():
        return read_nerfstudio(path, downscale, allow_outside_paths)
    if (path / "transforms_train.json").is_file():
        from splat2splat.data.readers.blender import read_blender

        return read_blender(path, allow_outside_paths)
    for sparse in (path / "sparse" / "0", path / "sparse", path):
        if (sparse / "cameras.bin").is_file() or (sparse / "cameras.txt").is_file():
            from splat2splat.data.readers.colmap import read_colmap

            return read_colmap(path, sparse, downscale, allow_outside_paths)
    raise InputError(path, "no transforms.json, transforms_train.json or COLMAP sparse model found")


def load_dataset(
    path: str | Path,
    downscale: int = 1,
    eval_every: int = 8,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    allow_outside_paths: bool = False,
) -> Dataset:
    """Read any supported format (nerfstudio, COLMAP, Blender) into a normalised :class:`Dataset`.

    ``allow_outside_paths``: see :func:`read_raw_scene`.
    """
    if downscale < 1:
        raise InputError(path, f"downscale factor must be >= 1, got {downscale}")
    raw = read_raw_scene(path, downscale, allow_outside_paths)
    return build_dataset(raw, downscale=downscale, eval_every=eval_every, background=background)

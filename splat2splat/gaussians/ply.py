"""Gaussian scenes as INRIA 3DGS PLY files (read and write), the helpers every format shares (the export
tensors, the opacity clamp, the final checks of a loaded scene) and pruning. The other formats (compressed
PLY, ``.splat``, ``.spz``) and the one entry point that reads any of them are in
:mod:`splat2splat.gaussians.formats`.

Files are in the ORIGINAL world frame, tensors in memory in the normalised frame
(:class:`~splat2splat.data.dataset.SceneNormalization`: a translation plus a uniform scale, so only the means
and log-scales change). With a ``frame_transform`` (a dataset whose poses were re-oriented, e.g. nerfstudio's
``applied_transform``) rotations and SH colours turn as well: :mod:`splat2splat.gaussians.frames`.

The INRIA PLY holds one ``vertex`` element with float32 properties, in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1} opacity scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

``f_rest`` is channel-major (all R coefficients, then all G, then all B), ``opacity`` a logit,
``scale_*`` log standard deviations and ``rot_*`` a w, x, y, z quaternion, exactly like our tensors.

Precision: a file stores float32 values in the original frame. With the identity normalisation a
save -> load round trip is bit-exact; otherwise means and log-scales come back within float32 rounding
of the original-frame values (a float32 file cannot hold more), everything else is bit-exact.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import plyfile
import torch

from splat2splat.data.dataset import SceneNormalization
from splat2splat.errors import InputError
from splat2splat.gaussians.frames import from_file_frame, to_file_frame
from splat2splat.gaussians.model import SPLAT_KEYS, num_sh_bases, rgb_to_sh, sh_degree_of
from splat2splat.io import atomic_write, exists, is_file
from splat2splat.ply_header import check_ply_size, read_ply_header

MAX_SH_DEGREE = 3
# Number of f_rest_* properties for each SH degree: 3 colour channels x the non-DC coefficients.
F_REST_COUNT_TO_DEGREE = {3 * (num_sh_bases(degree) - 1): degree for degree in range(MAX_SH_DEGREE + 1)}

POSITION_NAMES = ("x", "y", "z")
NORMAL_NAMES = ("nx", "ny", "nz")  # unused by 3DGS, but the original code writes them and viewers expect them
DC_NAMES = ("f_dc_0", "f_dc_1", "f_dc_2")
RGB_NAMES = ("red", "green", "blue")  # nerfstudio's `ply_color_mode=rgb` writes uchar colours instead of f_dc
SCALE_NAMES = ("scale_0", "scale_1", "scale_2")
ROTATION_NAMES = ("rot_0", "rot_1", "rot_2", "rot_3")
F_REST_PATTERN = re.compile(r"f_rest_(\d+)")

# Opacity logits from 8-bit sources (an alpha byte of 0 or 255 decodes to -inf / +inf) are clamped to
# +-OPACITY_LOGIT_LIMIT. 17 is where the renderer stops telling them apart: float32 sigmoid(17) rounds to
# exactly 1.0 (as sigmoid(+inf) does; gsplat then clamps alpha to 0.999 either way), and sigmoid(-17) = 4e-8
# is far below the 1/255 alpha below which gsplat skips a Gaussian, as it skips one of opacity 0. So the
# clamp renders bit-identically to the infinite value it replaces, and the scene stays trainable.
OPACITY_LOGIT_LIMIT = 17.0


# --------------------------------------------------------------------------------------------- writing


def inria_property_names(sh_degree: int) -> list[str]:
    """The vertex properties of an INRIA 3DGS PLY of ``sh_degree``, in the original code's order."""
    f_rest = [f"f_rest_{i}" for i in range(3 * (num_sh_bases(sh_degree) - 1))]
    return [*POSITION_NAMES, *NORMAL_NAMES, *DC_NAMES, *f_rest, "opacity", *SCALE_NAMES, *ROTATION_NAMES]


def save_ply(
    path: str | Path,
    splats: dict[str, torch.Tensor],
    normalization: SceneNormalization,
    sh_degree: int | None = None,
    frame_transform: torch.Tensor | None = None,
) -> int:
    """Write ``splats`` as an INRIA 3DGS PLY (binary little endian float32) in the original frame, atomically.

    ``sh_degree`` (default: the scene's) drops the higher SH bands. ``frame_transform``: the map from the
    file's frame into the dataset frame (``Dataset.frame_transform`` writes the capture's original frame,
    see :mod:`splat2splat.gaussians.frames`; None writes the dataset frame). Gaussians with NaN / inf values
    are left out. Returns the number of Gaussians written.
    """
    tensors = export_tensors(path, splats, normalization, sh_degree, frame_transform)
    n = len(tensors["means"])
    columns = torch.cat([
        tensors["means"],
        torch.zeros(n, len(NORMAL_NAMES)),
        tensors["sh0"][:, 0, :],
        _sh_rest_to_channel_major(tensors["shN"]),
        tensors["opacities"][:, None],
        tensors["scales"],
        tensors["quats"],
    ], dim=1)
    names = inria_property_names(sh_degree_of(tensors))
    vertex = np.ascontiguousarray(columns.numpy(), dtype="<f4").view([(name, "<f4") for name in names])[:, 0]
    ply = plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    with atomic_write(path, "wb") as f:
        ply.write(f)
    return n


def export_tensors(
    path: str | Path,
    splats: dict[str, torch.Tensor],
    normalization: SceneNormalization,
    sh_degree: int | None,
    frame_transform: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Detached CPU float32 copies in the file's frame, SH reduced, non-finite Gaussians left out.

    What every writer starts from; ``frame_transform`` as in :func:`save_ply`.
    """
    tensors = {key: splats[key].detach().cpu().float() for key in SPLAT_KEYS}
    tensors["shN"] = _reduce_sh(tensors["shN"], sh_degree)
    tensors = to_file_frame(tensors, normalization, frame_transform)
    tensors = select_splats(tensors, _finite_rows(tensors))
    if len(tensors["means"]) == 0:
        raise InputError(path, "no Gaussians left to write (all were pruned away or had NaN / infinite values)")
    return tensors


def _reduce_sh(sh_rest: torch.Tensor, sh_degree: int | None) -> torch.Tensor:
    """Keep the SH bands up to ``sh_degree`` (coefficients are ordered by band, so this is a prefix)."""
    scene_degree = sh_degree_of({"shN": sh_rest})
    if sh_degree is None:
        return sh_rest
    if not 0 <= sh_degree <= scene_degree:
        raise InputError(None, f"SH degree {sh_degree} is not available: the scene has SH degree {scene_degree}, "
                               f"choose 0 to {scene_degree}")
    return sh_rest[:, : num_sh_bases(sh_degree) - 1]


def _sh_rest_to_channel_major(sh_rest: torch.Tensor) -> torch.Tensor:
    """[N, K-1, 3] -> [N, 3 (K-1)] as R coefficients, then G, then B (the INRIA f_rest order)."""
    return sh_rest.transpose(1, 2).reshape(len(sh_rest), -1)


def _sh_rest_from_channel_major(f_rest: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_sh_rest_to_channel_major`."""
    return f_rest.reshape(len(f_rest), 3, f_rest.shape[1] // 3).transpose(1, 2).contiguous()


def _finite_rows(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """True for Gaussians whose parameters are all finite."""
    keep = torch.ones(len(tensors["means"]), dtype=torch.bool)
    for value in tensors.values():
        keep &= torch.isfinite(value.reshape(len(value), math.prod(value.shape[1:]))).all(dim=1)
    return keep


# --------------------------------------------------------------------------------------------- reading


def load_ply(path: str | Path, normalization: SceneNormalization,
             frame_transform: torch.Tensor | None = None) -> torch.nn.ParameterDict:
    """Read an INRIA 3DGS PLY (SH degree 0-3) into our layout, in the normalised frame.

    Accepts what the original 3DGS code and nerfstudio's splatfacto export write: properties are found
    by name (order and extra properties do not matter), binary of either byte order or ASCII, float or
    double, and nerfstudio's uchar ``red green blue`` in place of ``f_dc_*``. An infinite ``opacity`` (PLYs
    decoded from 8-bit formats) is clamped to +-:data:`OPACITY_LOGIT_LIMIT`; any other NaN / inf, and any
    other problem, raises :class:`InputError` naming the file. ``frame_transform`` as in :func:`save_ply`.
    """
    path = Path(path)
    vertex = _read_vertex_element(path)
    f_rest_names = _f_rest_names(path, vertex)
    uses_rgb = not any(name in vertex for name in DC_NAMES) and all(name in vertex for name in RGB_NAMES)
    dc_names = () if uses_rgb else DC_NAMES
    float_names = [*POSITION_NAMES, *dc_names, *f_rest_names, "opacity", *SCALE_NAMES, *ROTATION_NAMES]
    _check_present(path, vertex, float_names)
    columns = {name: _float32_column(path, vertex, name) for name in float_names}
    columns["opacity"] = clamp_opacity_logits(columns["opacity"])
    _check_finite(path, columns)
    sh0 = _rgb_as_sh(path, vertex) if uses_rgb else _stack(columns, DC_NAMES)
    f_rest = _stack(columns, f_rest_names) if f_rest_names else torch.zeros(len(vertex), 0)
    return splats_from_file(path, {
        "means": _stack(columns, POSITION_NAMES),
        "scales": _stack(columns, SCALE_NAMES),
        "quats": _stack(columns, ROTATION_NAMES),
        "opacities": torch.from_numpy(columns["opacity"]),
        "sh0": sh0[:, None, :].contiguous(),
        "shN": _sh_rest_from_channel_major(f_rest),
    }, normalization, frame_transform, "vertex")


def splats_from_file(path: Path, tensors: dict[str, torch.Tensor], normalization: SceneNormalization,
                     frame_transform: torch.Tensor | None, what: str) -> torch.nn.ParameterDict:
    """Float32 file-frame Gaussians (finite; ``what`` names a row in messages) checked and moved into the
    normalised frame, as trainable Parameters. Every reader ends here."""
    _check_rotations(path, tensors["quats"], what)
    moved = from_file_frame(tensors, normalization, frame_transform)
    # Finite in the file but near the float32 limit, a value can overflow when moved into the scene's frame.
    _check_finite(path, {f"{name} (in the scene's frame)": moved[key][:, k].numpy()
                         for key, names in (("means", POSITION_NAMES), ("scales", SCALE_NAMES))
                         for k, name in enumerate(names)})
    return _parameter_dict(moved)


def clamp_opacity_logits(logits: np.ndarray) -> np.ndarray:
    """+-inf -> +-:data:`OPACITY_LOGIT_LIMIT` (NaN stays NaN, for the finiteness check to refuse)."""
    return np.where(np.isinf(logits), np.sign(logits) * OPACITY_LOGIT_LIMIT, logits).astype(np.float32)


def opacity_logits(alpha: np.ndarray) -> np.ndarray:
    """Logits of opacities in [0, 1] (from 8-bit sources), 0 and 1 clamped as :func:`clamp_opacity_logits`."""
    alpha = np.asarray(alpha, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return clamp_opacity_logits(np.log(alpha) - np.log1p(-alpha))


class _Vertex:
    """The vertex element of a parsed PLY, with property lookup by name."""

    def __init__(self, element: plyfile.PlyElement):
        self.data = element.data
        self.properties_by_name = {prop.name: prop for prop in element.properties}

    def __contains__(self, name: str) -> bool:
        return name in self.properties_by_name

    def __len__(self) -> int:
        return len(self.data)


def _read_vertex_element(path: Path) -> _Vertex:
    if not exists(path):
        raise InputError(path, "PLY file does not exist")
    if not is_file(path):
        raise InputError(path, "is not a file (expected a Gaussian-splatting .ply)")
    check_ply_size(path, read_ply_header(path))
    try:
        # mmap: plyfile reads native-order binary PLYs as a memory map (fast); the columns are copied out below.
        ply = plyfile.PlyData.read(str(path))
    except plyfile.PlyHeaderParseError as exc:
        raise InputError(path, f"not a PLY file or a malformed PLY header ({exc})") from None
    except plyfile.PlyElementParseError as exc:
        raise InputError(path, f"truncated or corrupt PLY data ({exc})") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a PLY file (binary data where the PLY header should be)") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read PLY file ({type(exc).__name__}: {exc})") from None
    if "vertex" not in ply:
        raise InputError(path, "PLY file has no 'vertex' element, so it holds no Gaussians")
    vertex = _Vertex(ply["vertex"])
    if len(vertex) == 0:
        raise InputError(path, "PLY file contains no Gaussians (element vertex 0)")
    return vertex


def _f_rest_names(path: Path, vertex: _Vertex) -> list[str]:
    """The f_rest_* names in index order; their count fixes the SH degree."""
    indices = sorted(int(match.group(1)) for name in vertex.properties_by_name
                     if (match := F_REST_PATTERN.fullmatch(name)))
    if len(indices) not in F_REST_COUNT_TO_DEGREE:
        raise InputError(path, f"has {len(indices)} f_rest_* properties; SH degrees 0 to 3 need one of "
                               f"{', '.join(map(str, F_REST_COUNT_TO_DEGREE))}")
    missing = sorted(set(range(len(indices))) - set(indices))
    if missing:
        raise InputError(path, f"f_rest_* properties must be numbered 0 to {len(indices) - 1}; "
                               f"f_rest_{missing[0]} is missing")
    return [f"f_rest_{i}" for i in indices]


def _check_present(path: Path, vertex: _Vertex, required: Sequence[str]) -> None:
    missing = [name for name in required if name not in vertex]
    if missing:
        raise InputError(path, f"missing vertex properties {' '.join(missing)}; a 3D Gaussian-splatting PLY needs "
                               f"x y z f_dc_0..2 [f_rest_*] opacity scale_0..2 rot_0..3")


def _float32_column(path: Path, vertex: _Vertex, name: str) -> np.ndarray:
    prop = vertex.properties_by_name[name]
    if isinstance(prop, plyfile.PlyListProperty) or np.dtype(prop.val_dtype).kind != "f":
        raise InputError(path, f"vertex property '{name}' must be float or double, found {_type_name(prop)}")
    with np.errstate(over="ignore"):  # a double too large for float32 becomes inf, reported by _check_finite
        return np.ascontiguousarray(vertex.data[name], dtype=np.float32)


def _rgb_as_sh(path: Path, vertex: _Vertex) -> torch.Tensor:
    """nerfstudio's uchar colours as the DC SH coefficient (the colour they render with)."""
    for name in RGB_NAMES:
        prop = vertex.properties_by_name[name]
        if isinstance(prop, plyfile.PlyListProperty) or np.dtype(prop.val_dtype) != np.uint8:
            raise InputError(path, f"vertex property '{name}' must be uchar, found {_type_name(prop)}")
    rgb = np.stack([vertex.data[name] for name in RGB_NAMES], axis=1).astype(np.float32) / 255.0
    return rgb_to_sh(torch.from_numpy(rgb))


# PLY type names of numpy dtypes, for messages.
PLY_TYPE_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                  "f4": "float", "f8": "double"}


def _type_name(prop: plyfile.PlyProperty) -> str:
    if isinstance(prop, plyfile.PlyListProperty):
        return "a list property"
    dtype = np.dtype(prop.val_dtype)
    return PLY_TYPE_NAMES.get(f"{dtype.kind}{dtype.itemsize}", str(dtype))


def _check_finite(path: Path, columns: dict[str, np.ndarray]) -> None:
    bad_rows = np.zeros(len(next(iter(columns.values()))), dtype=bool)
    first_bad: tuple[int, str] | None = None
    for name, column in columns.items():
        bad = ~np.isfinite(column)
        if bad.any():
            row = int(np.argmax(bad))
            if first_bad is None or row < first_bad[0]:
                first_bad = (row, name)
            bad_rows |= bad
    if first_bad is not None:
        raise InputError(path, f"{int(bad_rows.sum())} Gaussians have NaN or infinite values "
                               f"(first: vertex {first_bad[0]}, property '{first_bad[1]}')")


def _check_rotations(path: Path, quats: torch.Tensor, what: str) -> None:
    zero = (quats == 0).all(dim=1)
    if zero.any():
        raise InputError(path, f"{int(zero.sum())} Gaussians have an all-zero rotation quaternion "
                               f"(first: {what} {int(zero.nonzero()[0])})")


def _stack(columns: dict[str, np.ndarray], names: Sequence[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([columns[name] for name in names], axis=1))


# --------------------------------------------------------------------------------------------- pruning


def prune_splats(
    splats: dict[str, torch.Tensor],
    min_opacity: float | None = None,
    max_scale: float | None = None,
    crop_box: Sequence[float] | None = None,
    normalization: SceneNormalization = SceneNormalization(),
) -> torch.nn.ParameterDict:
    """The Gaussians that pass every given filter, as a new ParameterDict (the input is not changed).

    ``min_opacity``: keep opacity (after the sigmoid) >= it. ``max_scale``: keep Gaussians whose largest
    standard deviation, in ORIGINAL-frame units, is <= it. ``crop_box``: (xmin, ymin, zmin, xmax, ymax,
    zmax) in the ORIGINAL frame; keep centres inside it (bounds included).
    """
    keep = torch.ones(len(splats["means"]), dtype=torch.bool, device=splats["means"].device)
    with torch.no_grad():
        if min_opacity is not None:
            if not 0.0 <= min_opacity <= 1.0:
                raise InputError(None, f"minimum opacity must be between 0 and 1, got {min_opacity}")
            keep &= torch.sigmoid(splats["opacities"]) >= min_opacity
        if max_scale is not None:
            if not max_scale > 0:
                raise InputError(None, f"maximum scale must be positive, got {max_scale}")
            largest_std = torch.exp(splats["scales"].double()).amax(dim=1) / normalization.scale
            keep &= largest_std <= max_scale
        if crop_box is not None:
            keep &= _inside_box(normalization.to_original(splats["means"].double()), _checked_box(crop_box))
    return _parameter_dict(select_splats(splats, keep), like=splats)


def select_splats(splats: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached copies of the Gaussians where ``keep`` is True."""
    return {key: splats[key].detach()[keep].clone() for key in SPLAT_KEYS}


def _checked_box(crop_box: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    values = [float(v) for v in crop_box]
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise InputError(None, f"crop box needs 6 finite numbers xmin ymin zmin xmax ymax zmax, got {list(crop_box)}")
    low, high = torch.tensor(values[:3], dtype=torch.float64), torch.tensor(values[3:], dtype=torch.float64)
    if (low > high).any():
        raise InputError(None, f"crop box minimum {values[:3]} exceeds its maximum {values[3:]}")
    return low, high


def _inside_box(points: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    low, high = (bound.to(points.device) for bound in box)
    return ((points >= low) & (points <= high)).all(dim=1)


def _parameter_dict(
    tensors: dict[str, torch.Tensor], like: dict[str, torch.Tensor] | None = None
) -> torch.nn.ParameterDict:
    """Wrap in Parameters; with ``like``, copy its requires_grad flags (else trainable, as init_splats)."""
    return torch.nn.ParameterDict({
        key: torch.nn.Parameter(tensors[key], requires_grad=True if like is None else like[key].requires_grad)
        for key in SPLAT_KEYS
    })

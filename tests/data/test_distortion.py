"""The OpenCV / COLMAP lens model, its Newton inverse and image undistortion."""

from __future__ import annotations

import torch

from splat2splat.data.distortion import LensDistortion, pixel_grid, sample_image, undistort_image, undistort_view
from tests.data.scenes import pattern_image

LENS = LensDistortion("OPENCV", k1=0.2, k2=-0.05, k3=0.01, p1=0.004, p2=-0.003)
INTRINSICS = (30.0, 31.0, 15.5, 12.5)  # fx, fy, cx, cy of a 32x24 image


def test_distort_matches_colmap_formula_at_a_point():
    x, y = 0.3, -0.2
    r2 = x * x + y * y  # written out the way COLMAP's OpenCVCameraModel::Distortion does
    radial = LENS.k1 * r2 + LENS.k2 * r2 * r2 + LENS.k3 * r2 * r2 * r2
    du = x * radial + 2 * LENS.p1 * x * y + LENS.p2 * (r2 + 2 * x * x)
    dv = y * radial + 2 * LENS.p2 * x * y + LENS.p1 * (r2 + 2 * y * y)
    x_d, y_d = LENS.distort(torch.tensor([x], dtype=torch.float64), torch.tensor([y], dtype=torch.float64))
    assert abs(float(x_d) - (x + du)) < 1e-12 and abs(float(y_d) - (y + dv)) < 1e-12


def test_undistort_inverts_distort_over_the_image():
    fx, fy, cx, cy = INTRINSICS
    u, v = pixel_grid(24, 32)
    x_d, y_d = ((u - cx) / fx).double(), ((v - cy) / fy).double()
    x, y = LENS.undistort(x_d, y_d)
    assert (x - x_d).abs().max() > 0.02  # the lens is strong enough for the inverse to matter
    x_back, y_back = LENS.distort(x, y)
    assert (x_back - x_d).abs().max() < 1e-9 and (y_back - y_d).abs().max() < 1e-9


def test_undistort_image_recovers_the_pinhole_image():
    """Photograph a smooth image through the lens (via the inverse), undistort, compare inside."""
    fx, fy, cx, cy = INTRINSICS
    pinhole = pattern_image(3)
    u, v = pixel_grid(24, 32)
    x, y = LENS.undistort((u - cx) / fx, (v - cy) / fy)
    photographed = sample_image(pinhole, x * fx + cx, y * fy + cy)

    undistorted, valid = undistort_image(photographed, INTRINSICS, LENS)

    interior = valid.clone()
    interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
    assert (photographed - pinhole).abs().amax(-1)[interior].max() > 0.04
    assert (undistorted - pinhole).abs().amax(-1)[interior].max() < 0.01
    assert not valid[0, 0] and valid[12, 16]  # undoing pincushion distortion empties the corners


def test_undistort_view_masks_and_paints_pixels_without_data():
    background = torch.tensor([0.0, 1.0, 0.0])
    image = torch.full((24, 32, 3), 0.5)
    user_mask = torch.ones(24, 32, dtype=torch.bool)
    user_mask[:, 20:] = False

    out, mask = undistort_view(image, user_mask, INTRINSICS, LENS, background)

    assert not mask[0, 0] and torch.equal(out[0, 0], background)  # corner: outside the photograph
    assert mask[12, 10] and not mask[12, 25]  # inside: the user's mask, resampled
    torch.testing.assert_close(out[12, 16], torch.full((3,), 0.5))
    barrel = LensDistortion("RADIAL", k1=-0.1)
    _, no_mask = undistort_view(image, None, INTRINSICS, barrel, background)
    assert no_mask is None  # every pinhole pixel has data: no mask needed

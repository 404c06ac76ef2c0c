"""The C++ projection and SH colours against the PyTorch reference (rasterize.project, gsplat's _spherical_harmonics):
values, radii and every gradient on random scenes with the hard cases, and when the "cpp" rasterizer uses them."""

from __future__ import annotations

import pytest
import torch

from splat2splat.gaussians import rasterize as R
from splat2splat.kernels import cpu_projection
from tests.kernels.test_cpu_rasterizer import HAS_COMPILER, hard_scene, needs_compiler, render_with

NAMES = ("means", "quats", "scales", "opacities", "sh")
WIDTH, HEIGHT = 53, 37


@pytest.fixture(scope="module", autouse=True)
def extension():
    if HAS_COMPILER:  # a machine with a compiler must build it: a broken build is a failure, not a skip
        assert cpu_projection.cpu_projection_extension() is not None, "the C++ projection did not build"


def harder_scene(dtype, seed=0):
    """hard_scene plus Gaussians far beyond the image's sides (the tangent clamp), exactly on the near plane, flat
    (one zero scale), and in the last slots huge and off-screen (their box still reaches the image)."""
    params, viewmats, Ks = hard_scene(800, dtype, seed)
    means, quats, scales, opacities, _ = params
    means[20:24] = torch.tensor([[3.0, 0.1, -1.5], [-3.0, 0.0, -1.0], [0.1, 2.5, -1.5], [0.0, -2.5, -1.2]], dtype=dtype)
    scales[20:24] = 0.6
    means[24] = torch.tensor([0.0, 0.0, -2.49], dtype=dtype)  # depth 0.01: exactly the near plane, culled
    scales[25:28, 2] = 0.0  # flat
    means[-4:] = torch.tensor([[1.5, 0.0, 0.0], [-1.5, 0.3, 0.0], [0.0, 1.4, 0.5], [0.2, -1.4, 0.3]], dtype=dtype)
    scales[-4:] = 0.5
    opacities[-4:] = 0.9
    return params, viewmats, Ks


def project_and_color(kind, params, viewmats, Ks, sh_degree, seed=2):
    """Projection and colours of one implementation, their gradients for random upstream gradients on every output
    (also those of culled Gaussians: the functions must differentiate everywhere as the reference does)."""
    project, colors = ((R.project, R.sh_colors) if kind == "torch"
                       else (cpu_projection.project, cpu_projection.sh_colors))
    params = [p.clone().requires_grad_(True) for p in params]
    means, quats, scales, opacities, sh = params
    radii, means2d, depths, conics = project(means, quats, scales, opacities[None], viewmats, Ks, WIDTH, HEIGHT, 0.01,
                                             1e10, 0.3)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    rgb = colors(sh_degree, means, campos, sh)
    outputs = {"means2d": means2d, "depths": depths, "conics": conics, "colors": rgb}
    g = torch.Generator().manual_seed(seed)
    sum(((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() for out in outputs.values())).backward()
    return radii, {k: v.detach() for k, v in outputs.items()}, {n: p.grad for n, p in zip(NAMES, params)}


def assert_relative(actual, expected, tolerance, name):
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * max(scale, 1e-30), msg=name)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_values_radii_and_gradients_match_the_pytorch_projection(dtype, sh_degree):
    params, viewmats, Ks = harder_scene(dtype)
    radii, outputs, grads = project_and_color("cpp", params, viewmats, Ks, sh_degree)
    ref_radii, ref_outputs, ref_grads = project_and_color("torch", params, viewmats, Ks, sh_degree)
    assert radii.dtype == ref_radii.dtype and torch.equal(radii, ref_radii)
    value_tolerance, grad_tolerance = (1e-5, 1e-4) if dtype == torch.float32 else (1e-12, 1e-10)
    for name, reference in ref_outputs.items():
        assert_relative(outputs[name], reference, value_tolerance, name)
    assert grads["opacities"] is None and ref_grads["opacities"] is None  # opacity only sets the extent
    for name in ("means", "quats", "scales", "sh"):
        assert torch.isfinite(grads[name]).all(), name
        assert_relative(grads[name], ref_grads[name], grad_tolerance, name)
    # The cases are there: culled on, at and behind the plane, clamped at the sides, huge off-screen drawn.
    assert (radii[0, [0, 1, 24]] == 0).all() and (radii[:, 8:12] == 0).all()
    assert (radii[:, 20:24] > 0).any() and (radii[:, -4:] > 0).any()
    if sh_degree == 0:  # colours do not depend on the direction: the means get only the projection's gradient
        assert (grads["sh"][:, 1:] == 0).all()


@needs_compiler
def test_upstream_gradients_that_are_none_or_partial():
    """Only conics, only means2d, only colours: the other gradients arrive as None and count as zero."""
    params, viewmats, Ks = harder_scene(torch.float64)
    for output in range(4):
        grads = {}
        for kind, project, colors in (("torch", R.project, R.sh_colors),
                                      ("cpp", cpu_projection.project, cpu_projection.sh_colors)):
            leaves = [p.clone().requires_grad_(True) for p in params]
            radii, means2d, depths, conics = project(*leaves[:3], leaves[3][None], viewmats, Ks, WIDTH, HEIGHT, 0.01,
                                                     1e10, 0.3)
            rgb = colors(3, leaves[0], torch.linalg.inv(viewmats)[:, :3, 3], leaves[4])
            ((means2d, depths, conics, rgb)[output] ** 2).sum().backward()
            grads[kind] = [p.grad for p in leaves]
        for name, ours, reference in zip(NAMES, grads["cpp"], grads["torch"]):
            if reference is None or (reference == 0).all():
                assert ours is None or (ours == 0).all(), (output, name)
            else:
                assert_relative(ours, reference, 1e-10, f"{name} from output {output}")


@needs_compiler
def test_the_cpp_rasterizer_projects_in_cpp_unless_the_cameras_need_gradients():
    params, viewmats, Ks = hard_scene(100, torch.float32)
    _, _, info, _ = render_with("cpp", params, viewmats, Ks, WIDTH, HEIGHT, 3)
    assert info["means2d"].grad_fn.name() == "_ProjectBackward"
    assert info["means2d"].grad is not None  # gsplat's strategies read it (retain_grad)
    viewmats = viewmats.clone().requires_grad_(True)  # a pose optimisation: the PyTorch projection differentiates
    image, _, info = R.rasterize(*params, viewmats, Ks, WIDTH, HEIGHT, 3, backend="cpp")
    assert info["means2d"].grad_fn.name() != "_ProjectBackward"
    image.sum().backward()
    assert viewmats.grad is not None and viewmats.grad.abs().sum() > 0


@needs_compiler
def test_without_the_projection_extension_the_cpp_rasterizer_projects_in_pytorch(monkeypatch):
    params, viewmats, Ks = hard_scene(300, torch.float32)
    image, alpha, info, grads = render_with("cpp", params, viewmats, Ks, WIDTH, HEIGHT, 2)
    monkeypatch.setattr(cpu_projection, "cpu_projection_extension", lambda: None)
    ref_image, ref_alpha, ref_info, ref_grads = render_with("cpp", params, viewmats, Ks, WIDTH, HEIGHT, 2)
    assert ref_info["means2d"].grad_fn.name() != "_ProjectBackward"
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-5)
    assert torch.equal(info["radii"], ref_info["radii"])
    for name, reference in ref_grads.items():
        assert_relative(grads[name], reference, 1e-4, name)


@needs_compiler
def test_bad_inputs_are_refused_with_a_message():
    params, viewmats, Ks = hard_scene(10, torch.float32)
    with pytest.raises(RuntimeError, match="SH degree must be 0 to 3"):
        cpu_projection.sh_colors(4, params[0], viewmats[:, :3, 3], torch.zeros(10, 25, 3))
    with pytest.raises(RuntimeError, match="viewmats \\[C, 4, 4\\] and Ks \\[C, 3, 3\\]"):
        cpu_projection.project(*params[:4], viewmats, Ks[:1], WIDTH, HEIGHT, 0.01, 1e10, 0.3)

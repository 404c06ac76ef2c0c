// Python bindings of the fused SSIM / L1 loss kernels: input validation, output allocation.
// Loaded by splat2splat/kernels/build.py (torch.utils.cpp_extension.load) as splat2splat_fused_ssim.

#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "fused_ssim.h"

namespace splat2splat {
namespace {

void check_planes(const at::Tensor &tensor, const at::Tensor &like, const char *name) {
    TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(tensor.dim() == 3, name, " must be [planes, height, width], got ", tensor.sizes());
    TORCH_CHECK(tensor.sizes() == like.sizes(), name, " shape ", tensor.sizes(), " != ", like.sizes());
    TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), name, " dtype differs from pred");
    TORCH_CHECK(tensor.device() == like.device(), name, " is on another device than pred");
}

void check_inputs(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window) {
    check_planes(pred, pred, "pred");
    check_planes(target, pred, "target");
    TORCH_CHECK(
        pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
        "fused SSIM supports float32 and float64, got ", pred.scalar_type()
    );
    // One block column per plane: gridDim.z is limited to 65535.
    TORCH_CHECK(pred.size(0) <= 65535, "fused SSIM supports at most 65535 planes, got ", pred.size(0));
    TORCH_CHECK(
        window.is_cuda() && window.is_contiguous() && window.dim() == 1 && window.numel() == 11 &&
            window.scalar_type() == pred.scalar_type() && window.device() == pred.device(),
        "window must be a contiguous 11-tap 1-D tensor with pred's dtype and device"
    );
}

} // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_ssim_forward(
    const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window, bool save_partials
) {
    check_inputs(pred, target, window);
    const c10::cuda::CUDAGuard device_guard(pred.device());
    at::Tensor ssim_map = at::empty_like(pred);
    const auto partial = [&]() { return save_partials ? at::empty_like(pred) : at::empty({0}, pred.options()); };
    at::Tensor d_map_d_mean = partial();
    at::Tensor d_map_d_second_moment = partial();
    at::Tensor d_map_d_cross_moment = partial();
    launch_fused_ssim_forward(
        pred, target, window, save_partials, ssim_map, d_map_d_mean, d_map_d_second_moment,
        d_map_d_cross_moment
    );
    return {ssim_map, d_map_d_mean, d_map_d_second_moment, d_map_d_cross_moment};
}

at::Tensor fused_l1_ssim_backward(
    const at::Tensor &pred,
    const at::Tensor &target,
    const at::Tensor &window,
    const at::Tensor &grad_map,
    const at::Tensor &d_map_d_mean,
    const at::Tensor &d_map_d_second_moment,
    const at::Tensor &d_map_d_cross_moment,
    double l1_grad_scale
) {
    check_inputs(pred, target, window);
    check_planes(grad_map, pred, "grad_map");
    check_planes(d_map_d_mean, pred, "d_map_d_mean");
    check_planes(d_map_d_second_moment, pred, "d_map_d_second_moment");
    check_planes(d_map_d_cross_moment, pred, "d_map_d_cross_moment");
    const c10::cuda::CUDAGuard device_guard(pred.device());
    at::Tensor grad_pred = at::empty_like(pred);
    launch_fused_l1_ssim_backward(
        pred, target, window, grad_map, d_map_d_mean, d_map_d_second_moment, d_map_d_cross_moment,
        l1_grad_scale, grad_pred
    );
    return grad_pred;
}

} // namespace splat2splat

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def(
        "forward", &splat2splat::fused_ssim_forward,
        "SSIM map of [P, H, W] planes (+ partials for backward)",
        py::arg("pred"), py::arg("target"), py::arg("window"), py::arg("save_partials")
    );
    m.def(
        "backward", &splat2splat::fused_l1_ssim_backward,
        "dLoss/dpred for sum(grad_map * ssim_map) + l1_grad_scale * sum(|pred - target|)",
        py::arg("pred"), py::arg("target"), py::arg("window"), py::arg("grad_map"),
        py::arg("d_map_d_mean"), py::arg("d_map_d_second_moment"), py::arg("d_map_d_cross_moment"),
        py::arg("l1_grad_scale")
    );
}

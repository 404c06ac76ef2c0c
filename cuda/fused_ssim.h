// Fused SSIM (+ L1 gradient) for the 3DGS photometric loss.
//
// Images are contiguous stacks of planes [P, H, W] (P = batch * channels), float32 or float64.
// The SSIM uses an 11x11 Gaussian window applied separably with zero padding, C1 = 0.01^2 and
// C2 = 0.03^2, exactly like the PyTorch reference in splat2splat/kernels/ssim.py, which also passes
// the 1-D window so both paths use the same weights bit for bit.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace splat2splat {

// Returns (ssim_map, d_map_d_mean, d_map_d_second_moment, d_map_d_cross_moment), all [P, H, W].
// The three partial derivatives of the SSIM map with respect to the local moments
// mean(pred), mean(pred^2) and mean(pred * target) are written only when save_partials is true
// (they are what the backward pass needs); otherwise they are empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_ssim_forward(
    const at::Tensor &pred,
    const at::Tensor &target,
    const at::Tensor &window,
    bool save_partials);

// dLoss/dpred for Loss = sum(grad_map * ssim_map) + l1_grad_scale * sum(|pred - target|),
// given the partials saved by fused_ssim_forward.
at::Tensor fused_l1_ssim_backward(
    const at::Tensor &pred,
    const at::Tensor &target,
    const at::Tensor &window,
    const at::Tensor &grad_map,
    const at::Tensor &d_map_d_mean,
    const at::Tensor &d_map_d_second_moment,
    const at::Tensor &d_map_d_cross_moment,
    double l1_grad_scale);

// Kernel launchers (fused_ssim.cu); inputs are validated by the bindings in fused_ssim.cpp.
void launch_fused_ssim_forward(
    const at::Tensor &pred,
    const at::Tensor &target,
    const at::Tensor &window,
    bool save_partials,
    at::Tensor &ssim_map,
    at::Tensor &d_map_d_mean,
    at::Tensor &d_map_d_second_moment,
    at::Tensor &d_map_d_cross_moment);

void launch_fused_l1_ssim_backward(
    const at::Tensor &pred,
    const at::Tensor &target,
    const at::Tensor &window,
    const at::Tensor &grad_map,
    const at::Tensor &d_map_d_mean,
    const at::Tensor &d_map_d_second_moment,
    const at::Tensor &d_map_d_cross_moment,
    double l1_grad_scale,
    at::Tensor &grad_pred);

} // namespace splat2splat

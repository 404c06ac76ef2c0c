// CUDA kernels of the fused SSIM / L1 loss; see fused_ssim.h for the contract.
//
// Each block produces a kTile x kTile tile of one image plane. It stages the fields to blur in
// shared memory with a kRadius-pixel halo (zeros outside the image = the reference's zero
// padding), blurs them horizontally into a kHaloTile x kTile buffer and then vertically, so every
// pixel costs 2 * 11 instead of 121 multiply-adds per field.
//
// Backward: with E_x = G*x, E_xx = G*(x^2), E_xy = G*(x*y) (G = the Gaussian blur), the SSIM map
// m depends on pred only through these three moments, so
//   dL/dx = G^T*(g * dm/dE_x) + 2x * G^T*(g * dm/dE_xx) + y * G^T*(g * dm/dE_xy),   g = dL/dm.
// G is symmetric with zero padding, hence G^T = G and the backward reuses the same blur.

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include "fused_ssim.h"

namespace splat2splat {
namespace {

constexpr int kRadius = 5;
constexpr int kWindow = 2 * kRadius + 1;
constexpr int kTile = 16;
constexpr int kHaloTile = kTile + 2 * kRadius;
constexpr int kThreads = kTile * kTile;
constexpr double kC1 = 0.01 * 0.01;
constexpr double kC2 = 0.03 * 0.03;

// Forward blurs x, y, x^2, y^2, x*y; backward blurs the three upstream-weighted partials.
constexpr int kForwardFields = 5;
constexpr int kBackwardFields = 3;

template <typename scalar_t, int kFields> struct HaloTiles {
    scalar_t halo[kFields][kHaloTile][kHaloTile]; // fields around the block's tile
    scalar_t rows[kFields][kHaloTile][kTile];     // after the horizontal pass
};

__device__ inline int thread_rank() { return threadIdx.y * kTile + threadIdx.x; }

// Maps a halo-tile cell of this block to its pixel index; false when it lies outside the image.
__device__ inline bool halo_cell_pixel(int cell, int height, int width, int &pixel) {
    const int y = static_cast<int>(blockIdx.y) * kTile - kRadius + cell / kHaloTile;
    const int x = static_cast<int>(blockIdx.x) * kTile - kRadius + cell % kHaloTile;
    if (y < 0 || y >= height || x < 0 || x >= width)
        return false;
    pixel = y * width + x;
    return true;
}

// Pixel index of this thread's output, or -1 for threads of a partial tile past the image border.
__device__ inline int output_pixel(int height, int width) {
    const int y = blockIdx.y * kTile + threadIdx.y;
    const int x = blockIdx.x * kTile + threadIdx.x;
    return (y < height && x < width) ? y * width + x : -1;
}

template <typename scalar_t>
__device__ inline void load_window(const scalar_t *window_global, scalar_t *window) {
    if (thread_rank() < kWindow)
        window[thread_rank()] = window_global[thread_rank()];
}

// Separable Gaussian blur of every staged field; returns the blurred values at this thread's pixel.
// Must be called by all threads of the block (it synchronises).
template <typename scalar_t, int kFields>
__device__ void separable_blur(
    HaloTiles<scalar_t, kFields> &tiles, const scalar_t *window, scalar_t (&blurred)[kFields]
) {
    __syncthreads(); // halo and window staged
    for (int cell = thread_rank(); cell < kHaloTile * kTile; cell += kThreads) {
        const int row = cell / kTile;
        const int col = cell % kTile;
#pragma unroll
        for (int field = 0; field < kFields; ++field) {
            scalar_t sum = 0;
#pragma unroll
            for (int k = 0; k < kWindow; ++k)
                sum += window[k] * tiles.halo[field][row][col + k];
            tiles.rows[field][row][col] = sum;
        }
    }
    __syncthreads();
#pragma unroll
    for (int field = 0; field < kFields; ++field) {
        scalar_t sum = 0;
#pragma unroll
        for (int k = 0; k < kWindow; ++k)
            sum += window[k] * tiles.rows[field][threadIdx.y + k][threadIdx.x];
        blurred[field] = sum;
    }
}

template <typename scalar_t>
__global__ void fused_ssim_forward_kernel(
    const scalar_t *__restrict__ pred,
    const scalar_t *__restrict__ target,
    const scalar_t *__restrict__ window_global,
    int height,
    int width,
    bool save_partials,
    scalar_t *__restrict__ ssim_map,
    scalar_t *__restrict__ d_map_d_mean,
    scalar_t *__restrict__ d_map_d_second_moment,
    scalar_t *__restrict__ d_map_d_cross_moment
) {
    __shared__ scalar_t window[kWindow];
    __shared__ HaloTiles<scalar_t, kForwardFields> tiles;

    const int64_t plane_offset = static_cast<int64_t>(blockIdx.z) * height * width;
    pred += plane_offset;
    target += plane_offset;

    load_window(window_global, window);
    for (int cell = thread_rank(); cell < kHaloTile * kHaloTile; cell += kThreads) {
        int pixel;
        scalar_t x = 0, y = 0;
        if (halo_cell_pixel(cell, height, width, pixel)) {
            x = pred[pixel];
            y = target[pixel];
        }
        const int row = cell / kHaloTile, col = cell % kHaloTile;
        tiles.halo[0][row][col] = x;
        tiles.halo[1][row][col] = y;
        tiles.halo[2][row][col] = x * x;
        tiles.halo[3][row][col] = y * y;
        tiles.halo[4][row][col] = x * y;
    }
    scalar_t moments[kForwardFields];
    separable_blur(tiles, window, moments);

    const int pixel = output_pixel(height, width);
    if (pixel < 0)
        return;

    const scalar_t c1 = static_cast<scalar_t>(kC1);
    const scalar_t c2 = static_cast<scalar_t>(kC2);
    const scalar_t mu_x = moments[0], mu_y = moments[1];
    const scalar_t sigma_xx = moments[2] - mu_x * mu_x;
    const scalar_t sigma_yy = moments[3] - mu_y * mu_y;
    const scalar_t sigma_xy = moments[4] - mu_x * mu_y;
    // SSIM = (A * B) / (C * D), in the reference's order of operations.
    const scalar_t a = 2 * mu_x * mu_y + c1;
    const scalar_t b = 2 * sigma_xy + c2;
    const scalar_t c = mu_x * mu_x + mu_y * mu_y + c1;
    const scalar_t d = sigma_xx + sigma_yy + c2;
    const scalar_t ssim = (a * b) / (c * d);
    ssim_map[plane_offset + pixel] = ssim;

    if (!save_partials)
        return;
    // Chain rule through sigma_xx = E_xx - mu_x^2 and sigma_xy = E_xy - mu_x mu_y.
    const scalar_t cd = c * d;
    d_map_d_mean[plane_offset + pixel] =
        2 * mu_y * b / cd - 2 * mu_x * ssim / c + 2 * mu_x * ssim / d - 2 * a * mu_y / cd;
    d_map_d_second_moment[plane_offset + pixel] = -ssim / d;
    d_map_d_cross_moment[plane_offset + pixel] = 2 * a / cd;
}

template <typename scalar_t>
__global__ void fused_l1_ssim_backward_kernel(
    const scalar_t *__restrict__ pred,
    const scalar_t *__restrict__ target,
    const scalar_t *__restrict__ window_global,
    const scalar_t *__restrict__ grad_map,
    const scalar_t *__restrict__ d_map_d_mean,
    const scalar_t *__restrict__ d_map_d_second_moment,
    const scalar_t *__restrict__ d_map_d_cross_moment,
    int height,
    int width,
    scalar_t l1_grad_scale,
    scalar_t *__restrict__ grad_pred
) {
    __shared__ scalar_t window[kWindow];
    __shared__ HaloTiles<scalar_t, kBackwardFields> tiles;

    const int64_t plane_offset = static_cast<int64_t>(blockIdx.z) * height * width;
    pred += plane_offset;
    target += plane_offset;
    grad_map += plane_offset;
    d_map_d_mean += plane_offset;
    d_map_d_second_moment += plane_offset;
    d_map_d_cross_moment += plane_offset;
    grad_pred += plane_offset;

    load_window(window_global, window);
    for (int cell = thread_rank(); cell < kHaloTile * kHaloTile; cell += kThreads) {
        int pixel;
        scalar_t upstream_mean = 0, upstream_second = 0, upstream_cross = 0;
        if (halo_cell_pixel(cell, height, width, pixel)) {
            const scalar_t g = grad_map[pixel];
            upstream_mean = g * d_map_d_mean[pixel];
            upstream_second = g * d_map_d_second_moment[pixel];
            upstream_cross = g * d_map_d_cross_moment[pixel];
        }
        const int row = cell / kHaloTile, col = cell % kHaloTile;
        tiles.halo[0][row][col] = upstream_mean;
        tiles.halo[1][row][col] = upstream_second;
        tiles.halo[2][row][col] = upstream_cross;
    }
    scalar_t spread[kBackwardFields];
    separable_blur(tiles, window, spread);

    const int pixel = output_pixel(height, width);
    if (pixel < 0)
        return;
    const scalar_t x = pred[pixel];
    const scalar_t y = target[pixel];
    // d|x - y|/dx = sign(x - y), with sign(0) = 0 as in torch.abs's backward.
    const scalar_t l1_sign = static_cast<scalar_t>((x > y) - (x < y));
    grad_pred[pixel] = spread[0] + 2 * x * spread[1] + y * spread[2] + l1_grad_scale * l1_sign;
}

dim3 plane_tiles_grid(const at::Tensor &planes) {
    const auto tiles = [](int64_t extent) {
        return static_cast<unsigned>((extent + kTile - 1) / kTile);
    };
    return dim3(tiles(planes.size(2)), tiles(planes.size(1)), static_cast<unsigned>(planes.size(0)));
}

template <typename scalar_t> scalar_t *data_or_null(at::Tensor &tensor, bool wanted) {
    return wanted ? tensor.data_ptr<scalar_t>() : nullptr;
}

} // namespace

void launch_fused_ssim_forward(
    const at::Tensor &pred,
    const at::Tensor &target,
    const at::Tensor &window,
    bool save_partials,
    at::Tensor &ssim_map,
    at::Tensor &d_map_d_mean,
    at::Tensor &d_map_d_second_moment,
    at::Tensor &d_map_d_cross_moment
) {
    if (pred.numel() == 0)
        return;
    const int height = static_cast<int>(pred.size(1));
    const int width = static_cast<int>(pred.size(2));
    const dim3 threads(kTile, kTile);
    const dim3 grid = plane_tiles_grid(pred);
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "fused_ssim_forward", [&]() {
        fused_ssim_forward_kernel<scalar_t>
            <<<grid, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                pred.data_ptr<scalar_t>(),
                target.data_ptr<scalar_t>(),
                window.data_ptr<scalar_t>(),
                height,
                width,
                save_partials,
                ssim_map.data_ptr<scalar_t>(),
                data_or_null<scalar_t>(d_map_d_mean, save_partials),
                data_or_null<scalar_t>(d_map_d_second_moment, save_partials),
                data_or_null<scalar_t>(d_map_d_cross_moment, save_partials)
            );
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
}

void launch_fused_l1_ssim_backward(
    const at::Tensor &pred,
    const at::Tensor &target,
    const at::Tensor &window,
    const at::Tensor &grad_map,
    const at::Tensor &d_map_d_mean,
    const at::Tensor &d_map_d_second_moment,
    const at::Tensor &d_map_d_cross_moment,
    double l1_grad_scale,
    at::Tensor &grad_pred
) {
    if (pred.numel() == 0)
        return;
    const int height = static_cast<int>(pred.size(1));
    const int width = static_cast<int>(pred.size(2));
    const dim3 threads(kTile, kTile);
    const dim3 grid = plane_tiles_grid(pred);
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "fused_l1_ssim_backward", [&]() {
        fused_l1_ssim_backward_kernel<scalar_t>
            <<<grid, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                pred.data_ptr<scalar_t>(),
                target.data_ptr<scalar_t>(),
                window.data_ptr<scalar_t>(),
                grad_map.data_ptr<scalar_t>(),
                d_map_d_mean.data_ptr<scalar_t>(),
                d_map_d_second_moment.data_ptr<scalar_t>(),
                d_map_d_cross_moment.data_ptr<scalar_t>(),
                height,
                width,
                static_cast<scalar_t>(l1_grad_scale),
                grad_pred.data_ptr<scalar_t>()
            );
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
}

} // namespace splat2splat

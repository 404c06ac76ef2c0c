// SSIM map and the gradient of L1 + SSIM on the CPU: the contract of fused_ssim.h (the CUDA kernels), with the same
// Python-side calls (splat2splat/kernels/ssim.py). Loaded by splat2splat/kernels/build.py as splat2splat_cpu_ssim.
//
// Images are contiguous stacks of planes [P, H, W] (P = batch * channels), float32 or float64. Like the PyTorch
// reference (splat2splat/kernels/ssim.py, same 1-D window passed in), the 11x11 Gaussian blur with zero padding is
// applied down the columns, then along the rows; every value is computed in the images' dtype.
// Forward blurs x, y, x^2, y^2, x*y; the backward blurs the three upstream-weighted partials (the blur is symmetric
// with zero padding, so it is its own transpose):
//   dL/dx = G*(g dm/dE_x) + 2x G*(g dm/dE_xx) + y G*(g dm/dE_xy) + l1_grad_scale sign(x - y),   g = dL/dm.
// Output rows are independent (OpenMP over planes x rows): the result does not depend on the thread count.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace splat2splat {
namespace {

constexpr int kRadius = 5;
constexpr int kWindow = 2 * kRadius + 1;
constexpr double kC1 = 0.01 * 0.01;
constexpr double kC2 = 0.03 * 0.03;

// Calls row_done(plane, y, blurred) for every output row of every plane, where blurred[f] points to the W values of
// field f blurred (columns first, then rows; zero outside the image) and fields(plane, f) to field f's [H, W] plane.
template <typename scalar_t, int kFields, typename Fields, typename RowDone>
void blur_rows(int64_t planes, int64_t height, int64_t width, const scalar_t *window, Fields fields, RowDone row_done) {
#pragma omp parallel num_threads(at::get_num_threads())
    {
        // Column-blurred row with a zero border of kRadius on both sides, per field; then the finished row.
        std::vector<scalar_t> padded(kFields * (width + 2 * kRadius), scalar_t(0));
        std::vector<scalar_t> blurred(kFields * width);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < planes * height; ++task) {
            const int64_t plane = task / height, y = task % height;
            const int64_t k_first = std::max<int64_t>(0, kRadius - y);
            const int64_t k_last = std::min<int64_t>(kWindow - 1, height - 1 - y + kRadius);
            std::array<const scalar_t *, kFields> out;
            for (int f = 0; f < kFields; ++f) {
                const scalar_t *field = fields(plane, f);
                scalar_t *column = padded.data() + f * (width + 2 * kRadius) + kRadius;
                scalar_t *row = blurred.data() + f * width;
                for (int64_t x = 0; x < width; ++x) column[x] = scalar_t(0);
                for (int64_t k = k_first; k <= k_last; ++k) {
                    const scalar_t w = window[k];
                    const scalar_t *source = field + (y + k - kRadius) * width;
                    for (int64_t x = 0; x < width; ++x) column[x] += w * source[x];
                }
                const scalar_t *left = column - kRadius;
                for (int64_t x = 0; x < width; ++x) row[x] = scalar_t(0);
                for (int k = 0; k < kWindow; ++k) {
                    const scalar_t w = window[k];
                    for (int64_t x = 0; x < width; ++x) row[x] += w * left[x + k];
                }
                out[f] = row;
            }
            row_done(plane, y, out);
        }
    }
}

void check_planes(const at::Tensor &tensor, const at::Tensor &like, const char *name) {
    TORCH_CHECK(tensor.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(tensor.dim() == 3, name, " must be [planes, height, width], got ", tensor.sizes());
    TORCH_CHECK(tensor.sizes() == like.sizes(), name, " shape ", tensor.sizes(), " != ", like.sizes());
    TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), name, " dtype differs from pred");
}

void check_inputs(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window) {
    TORCH_CHECK(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
                "the CPU SSIM supports float32 and float64, got ", pred.scalar_type());
    check_planes(pred, pred, "pred");
    check_planes(target, pred, "target");
    TORCH_CHECK(window.device().is_cpu() && window.is_contiguous() && window.dim() == 1 &&
                    window.numel() == kWindow && window.scalar_type() == pred.scalar_type(),
                "window must be a contiguous 11-tap 1-D CPU tensor with pred's dtype");
}

template <typename scalar_t>
void forward_impl(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window, bool save_partials,
                  at::Tensor &ssim_map, at::Tensor &d_mean, at::Tensor &d_second, at::Tensor &d_cross) {
    const int64_t planes = pred.size(0), height = pred.size(1), width = pred.size(2), area = height * width;
    const scalar_t *x_all = pred.data_ptr<scalar_t>(), *y_all = target.data_ptr<scalar_t>();
    // x^2, y^2 and x y of every pixel, blurred like x and y.
    std::vector<scalar_t> products(3 * planes * area);
    at::parallel_for(0, planes * area, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const scalar_t x = x_all[i], y = y_all[i];
            products[i] = x * x;
            products[planes * area + i] = y * y;
            products[2 * planes * area + i] = x * y;
        }
    });
    auto fields = [&](int64_t plane, int f) -> const scalar_t * {
        if (f == 0) return x_all + plane * area;
        if (f == 1) return y_all + plane * area;
        return products.data() + (f - 2) * planes * area + plane * area;
    };
    scalar_t *out = ssim_map.data_ptr<scalar_t>();
    scalar_t *dm = save_partials ? d_mean.data_ptr<scalar_t>() : nullptr;
    scalar_t *ds = save_partials ? d_second.data_ptr<scalar_t>() : nullptr;
    scalar_t *dc = save_partials ? d_cross.data_ptr<scalar_t>() : nullptr;
    const scalar_t c1 = static_cast<scalar_t>(kC1), c2 = static_cast<scalar_t>(kC2);
    blur_rows<scalar_t, 5>(planes, height, width, window.data_ptr<scalar_t>(), fields,
                           [&](int64_t plane, int64_t y, const std::array<const scalar_t *, 5> &moments) {
        const int64_t row = plane * area + y * width;
        for (int64_t x = 0; x < width; ++x) {
            // The reference's operations, in its order.
            const scalar_t mu_x = moments[0][x], mu_y = moments[1][x];
            const scalar_t sigma_xx = moments[2][x] - mu_x * mu_x;
            const scalar_t sigma_yy = moments[3][x] - mu_y * mu_y;
            const scalar_t sigma_xy = moments[4][x] - mu_x * mu_y;
            const scalar_t a = scalar_t(2) * mu_x * mu_y + c1;
            const scalar_t b = scalar_t(2) * sigma_xy + c2;
            const scalar_t c = mu_x * mu_x + mu_y * mu_y + c1;
            const scalar_t d = sigma_xx + sigma_yy + c2;
            const scalar_t ssim = (a * b) / (c * d);
            out[row + x] = ssim;
            if (save_partials) {
                // Chain rule through sigma_xx = E_xx - mu_x^2 and sigma_xy = E_xy - mu_x mu_y.
                const scalar_t cd = c * d;
                dm[row + x] = scalar_t(2) * mu_y * b / cd - scalar_t(2) * mu_x * ssim / c +
                              scalar_t(2) * mu_x * ssim / d - scalar_t(2) * a * mu_y / cd;
                ds[row + x] = -ssim / d;
                dc[row + x] = scalar_t(2) * a / cd;
            }
        }
    });
}

template <typename scalar_t>
void backward_impl(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window,
                   const at::Tensor &grad_map, const at::Tensor &d_mean, const at::Tensor &d_second,
                   const at::Tensor &d_cross, double l1_grad_scale, at::Tensor &grad_pred) {
    const int64_t planes = pred.size(0), height = pred.size(1), width = pred.size(2), area = height * width;
    const scalar_t *g = grad_map.data_ptr<scalar_t>(), *dm = d_mean.data_ptr<scalar_t>();
    const scalar_t *ds = d_second.data_ptr<scalar_t>(), *dc = d_cross.data_ptr<scalar_t>();
    std::vector<scalar_t> upstream(3 * planes * area);
    at::parallel_for(0, planes * area, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            upstream[i] = g[i] * dm[i];
            upstream[planes * area + i] = g[i] * ds[i];
            upstream[2 * planes * area + i] = g[i] * dc[i];
        }
    });
    auto fields = [&](int64_t plane, int f) -> const scalar_t * {
        return upstream.data() + f * planes * area + plane * area;
    };
    const scalar_t *x_all = pred.data_ptr<scalar_t>(), *y_all = target.data_ptr<scalar_t>();
    scalar_t *out = grad_pred.data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(l1_grad_scale);
    blur_rows<scalar_t, 3>(planes, height, width, window.data_ptr<scalar_t>(), fields,
                           [&](int64_t plane, int64_t y, const std::array<const scalar_t *, 3> &spread) {
        const int64_t row = plane * area + y * width;
        for (int64_t x = 0; x < width; ++x) {
            const scalar_t xv = x_all[row + x], yv = y_all[row + x];
            // d|x - y|/dx = sign(x - y), with sign(0) = 0 as in torch.abs's backward.
            const scalar_t l1_sign = static_cast<scalar_t>((xv > yv) - (xv < yv));
            out[row + x] = spread[0][x] + scalar_t(2) * xv * spread[1][x] + yv * spread[2][x] + scale * l1_sign;
        }
    });
}

}  // namespace

// Returns (ssim_map, d_map_d_mean, d_map_d_second_moment, d_map_d_cross_moment), all [P, H, W] (the three partials
// empty unless save_partials).
std::vector<at::Tensor> cpu_ssim_forward(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window,
                                         bool save_partials) {
    check_inputs(pred, target, window);
    at::Tensor ssim_map = at::empty_like(pred);
    const auto partial = [&]() { return save_partials ? at::empty_like(pred) : at::empty({0}, pred.options()); };
    at::Tensor d_mean = partial(), d_second = partial(), d_cross = partial();
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "cpu_ssim_forward", [&] {
        forward_impl<scalar_t>(pred, target, window, save_partials, ssim_map, d_mean, d_second, d_cross);
    });
    return {ssim_map, d_mean, d_second, d_cross};
}

// dLoss/dpred for Loss = sum(grad_map * ssim_map) + l1_grad_scale * sum(|pred - target|).
at::Tensor cpu_l1_ssim_backward(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window,
                                const at::Tensor &grad_map, const at::Tensor &d_mean, const at::Tensor &d_second,
                                const at::Tensor &d_cross, double l1_grad_scale) {
    check_inputs(pred, target, window);
    check_planes(grad_map, pred, "grad_map");
    check_planes(d_mean, pred, "d_map_d_mean");
    check_planes(d_second, pred, "d_map_d_second_moment");
    check_planes(d_cross, pred, "d_map_d_cross_moment");
    at::Tensor grad_pred = at::empty_like(pred);
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "cpu_l1_ssim_backward", [&] {
        backward_impl<scalar_t>(pred, target, window, grad_map, d_mean, d_second, d_cross, l1_grad_scale, grad_pred);
    });
    return grad_pred;
}

}  // namespace splat2splat

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
    module.def("forward", &splat2splat::cpu_ssim_forward, "SSIM map of [P, H, W] planes (+ partials for backward)",
               py::arg("pred"), py::arg("target"), py::arg("window"), py::arg("save_partials"));
    module.def("backward", &splat2splat::cpu_l1_ssim_backward,
               "dLoss/dpred for sum(grad_map * ssim_map) + l1_grad_scale * sum(|pred - target|)", py::arg("pred"),
               py::arg("target"), py::arg("window"), py::arg("grad_map"), py::arg("d_map_d_mean"),
               py::arg("d_map_d_second_moment"), py::arg("d_map_d_cross_moment"), py::arg("l1_grad_scale"));
}

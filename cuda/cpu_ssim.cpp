// SSIM map and the gradient of L1 + SSIM on the CPU: the contract of fused_ssim.h (the CUDA kernels), with the same
// Python-side calls (splat2splat/kernels/ssim.py). Loaded by splat2splat/kernels/build.py as splat2splat_cpu_ssim.
//
// Images are contiguous stacks of planes [P, H, W] (P = batch * channels), as the CUDA kernels take them, or
// contiguous channel-last batches [B, H, W, C] (the training images' own layout: no copy into planes); float32 or
// float64. Like the PyTorch reference (splat2splat/kernels/ssim.py, same 1-D window passed in), the 11x11 Gaussian blur
// with zero padding is applied down the columns, then along the rows; every value is computed in the images' dtype,
// with the reference's operations in its order, so a channel gives the same bits in either layout. Forward blurs x,
// y, x^2, y^2, x*y; the backward blurs the three upstream-weighted partials (the blur is symmetric with zero padding,
// so it is its own transpose):
//   dL/dx = G*(g dm/dE_x) + 2x G*(g dm/dE_xx) + y G*(g dm/dE_xy) + l1_grad_scale sign(x - y),   g = dL/dm.
// Every output value is the same sum whichever rows are computed together (OpenMP over images x groups of rows): the
// result does not depend on the thread count.
//
// Speed: a row of a channel-last image is W * C values and its column blur is the same operation on each, so both
// layouts are one loop over a row's values, the row blur taking its taps C values apart. The blurs keep their sums
// in registers (GCC/clang vector extensions of the CPU's vector width) and store each sum once; the column
// blur makes a group of output rows together, reading each input row, and forming its squares and products (the
// backward: its upstream-weighted partials), once for the group; the SSIM formula runs on the row blur's registers.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace splat2splat {
namespace {

constexpr int kRadius = 5;
constexpr int kWindow = 2 * kRadius + 1;
constexpr double kC1 = 0.01 * 0.01;
constexpr double kC2 = 0.03 * 0.03;
// Vectors of the CPU's own width (64 bytes with AVX-512, 32 with AVX, 16 otherwise: wider ones, split by the
// compiler, spill the sums out of registers), and blocks that keep the sums in its registers (32 with AVX-512, 16
// with AVX or SSE): the row blur (and the SSIM formula) takes kBlock vectors along the row at once, the column blur
// kRowGroup output rows of one vector, reading each input row (and forming its squares and products) once for the
// group instead of once per output row. Measured on an AMD EPYC, 384 x 384 x 3, each build: AVX-512 4 / 4, AVX2
// and SSE 2 / 2 (AVX2 with 64-byte vectors was slower than the unblocked loops).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64, kBlock = 4, kRowGroup = 4;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32, kBlock = 2, kRowGroup = 2;
#else
constexpr int kVectorBytes = 16, kBlock = 2, kRowGroup = 2;
#endif
constexpr int kColumnVectors = 1;

template <typename scalar_t>
struct Vector {
    typedef scalar_t type __attribute__((vector_size(kVectorBytes)));
    static constexpr int kLanes = kVectorBytes / sizeof(scalar_t);
};

// The same code runs on vectors (a row's blocks) and on scalars (its tail): T is either.
template <typename T, typename scalar_t>
inline T load(const scalar_t *source) {
    T value;
    std::memcpy(&value, source, sizeof(T));
    return value;
}

template <typename T, typename scalar_t>
inline void store(scalar_t *destination, const T &value) {
    std::memcpy(destination, &value, sizeof(T));
}

template <typename T, typename scalar_t, std::size_t... kLane>
inline T splat_lanes(scalar_t value, std::index_sequence<kLane...>) {
    return T{((void)kLane, value)...};
}

// `value` in every lane (a broadcast; a loop over the lanes compiles to one masked insert per lane).
template <typename T, typename scalar_t>
inline T splat(scalar_t value) {
    if constexpr (std::is_same_v<T, scalar_t>) {
        return value;
    } else {
        return splat_lanes<T>(value, std::make_index_sequence<Vector<scalar_t>::kLanes>{});
    }
}

// sign(x - y) with sign(0) = 0 (and 0 for NaN), as torch.abs's backward.
template <typename T>
inline T sign_of_difference(const T &x, const T &y) {
    if constexpr (std::is_floating_point_v<T>) {
        return static_cast<T>((x > y) - (x < y));
    } else {
        return __builtin_convertvector((x < y) - (x > y), T);  // comparisons give -1 for true
    }
}

// Geometry of a stack of images: `images` images of `height` rows of `length` values each, the row blur's taps
// `stride` values apart (the channel count of a channel-last image, 1 for planes).
struct Layout {
    int64_t images, height, length, stride;
};

Layout layout_of(const at::Tensor &tensor) {
    if (tensor.dim() == 3) return {tensor.size(0), tensor.size(1), tensor.size(2), 1};
    return {tensor.size(0), tensor.size(1), tensor.size(2) * tensor.size(3), tensor.size(3)};
}

// Rows y0 .. y0 + kRows - 1 of every image (kRows at a time: the column blur reads each input row once for all of
// them): calls columns(image, y0, padded) to column-blur them into padded[j][f] (row y0 + j of field f; zero beyond
// the row's ends on both sides, kRadius taps wide), then finish(image, y, padded[y - y0]) for each of them inside the
// image. One thread's buffers are reused across its rows.
template <typename scalar_t, int kFields, int kRows, typename Columns, typename Finish>
void for_each_row_group(const Layout &layout, Columns columns, Finish finish) {
    const int64_t border = kRadius * layout.stride, padded_length = layout.length + 2 * border;
    const int64_t groups = (layout.height + kRows - 1) / kRows;
#pragma omp parallel num_threads(at::get_num_threads())
    {
        std::vector<scalar_t> buffer(kRows * kFields * padded_length, scalar_t(0));
        scalar_t *padded[kRows][kFields];
        for (int j = 0; j < kRows; ++j)
            for (int f = 0; f < kFields; ++f) padded[j][f] = buffer.data() + (j * kFields + f) * padded_length + border;
#pragma omp for schedule(static)
        for (int64_t task = 0; task < layout.images * groups; ++task) {
            const int64_t image = task / groups, y0 = task % groups * kRows;
            columns(image, y0, static_cast<scalar_t *const(*)[kFields]>(padded));
            for (int64_t j = 0; j < kRows && y0 + j < layout.height; ++j)
                finish(image, y0 + j, static_cast<const scalar_t *const *>(padded[j]));
        }
    }
}

// The column blur of rows y0 .. y0 + kRows - 1 at values [i, i + kCount lanes) of a row: for every input row r in
// the image that one of them needs, fields(offset of its values, values, v) forms vector v of its kFields values
// once; they are added into each output row's sums with that row's tap, taps ascending as in the reference, from the
// first inside the image (a tap outside it adds nothing, as there).
template <typename T, int kCount, int kFields, int kRows, typename scalar_t, typename Fields>
inline void blur_down_columns(int64_t height, int64_t y0, int64_t length, int64_t i, const scalar_t *window,
                              Fields fields, scalar_t *const (*padded)[kFields]) {
    constexpr int lanes = sizeof(T) / sizeof(scalar_t);
    T sums[kRows][kFields][kCount];
    for (int j = 0; j < kRows; ++j)
        for (int f = 0; f < kFields; ++f)
            for (int v = 0; v < kCount; ++v) sums[j][f][v] = splat<T>(scalar_t(0));
    const int64_t r_first = std::max<int64_t>(0, y0 - kRadius);
    const int64_t r_last = std::min<int64_t>(height - 1, y0 + kRows - 1 + kRadius);
    for (int64_t r = r_first; r <= r_last; ++r) {
        T values[kFields][kCount];
        for (int v = 0; v < kCount; ++v) fields(r * length + i + v * lanes, values, v);
        for (int j = 0; j < kRows; ++j) {
            const int64_t k = r - y0 - j + kRadius;
            if (k < 0 || k >= kWindow) continue;
            const T w = splat<T>(window[k]);
            for (int f = 0; f < kFields; ++f)
                for (int v = 0; v < kCount; ++v) sums[j][f][v] += w * values[f][v];
        }
    }
    for (int j = 0; j < kRows; ++j)
        for (int f = 0; f < kFields; ++f)
            for (int v = 0; v < kCount; ++v) store(padded[j][f] + i + v * lanes, sums[j][f][v]);
}

// Calls block(T-sized type, count, i) over [0, length): blocks of kVectors vectors, then scalars.
template <typename scalar_t, int kVectors, typename Block>
inline void for_each_block(int64_t length, Block block) {
    using V = typename Vector<scalar_t>::type;
    constexpr int64_t step = kVectors * Vector<scalar_t>::kLanes;
    int64_t i = 0;
    for (; i + step <= length; i += step) block(V{}, std::integral_constant<int, kVectors>{}, i);
    for (; i < length; ++i) block(scalar_t{}, std::integral_constant<int, 1>{}, i);
}

// The row blur of kFields column-blurred rows at values [i, i + kCount lanes): sums[f][v], taps ascending from 0.
template <typename T, int kCount, int kFields, typename scalar_t>
inline void blur_along_row(const scalar_t *const *padded, int64_t i, int64_t stride, const scalar_t *window,
                           T (&sums)[kFields][kCount]) {
    constexpr int lanes = sizeof(T) / sizeof(scalar_t);
    for (int f = 0; f < kFields; ++f)
        for (int v = 0; v < kCount; ++v) sums[f][v] = splat<T>(scalar_t(0));
    for (int k = 0; k < kWindow; ++k) {
        const T w = splat<T>(window[k]);
        const int64_t offset = i + (k - kRadius) * stride;
        for (int f = 0; f < kFields; ++f)
            for (int v = 0; v < kCount; ++v) sums[f][v] += w * load<T>(padded[f] + offset + v * lanes);
    }
}

void check_planes(const at::Tensor &tensor, const at::Tensor &like, const char *name) {
    TORCH_CHECK(tensor.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(tensor.dim() == 3 || tensor.dim() == 4, name,
                " must be [planes, height, width] or [batch, height, width, channels], got ", tensor.sizes());
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
    const Layout layout = layout_of(pred);
    const int64_t length = layout.length;
    const scalar_t *x_all = pred.data_ptr<scalar_t>(), *y_all = target.data_ptr<scalar_t>();
    const scalar_t *taps = window.data_ptr<scalar_t>();
    scalar_t *out = ssim_map.data_ptr<scalar_t>();
    scalar_t *dm = save_partials ? d_mean.data_ptr<scalar_t>() : nullptr;
    scalar_t *ds = save_partials ? d_second.data_ptr<scalar_t>() : nullptr;
    scalar_t *dc = save_partials ? d_cross.data_ptr<scalar_t>() : nullptr;

    // Blurs down the columns x, y and (formed here) x^2, y^2, x y.
    auto columns = [&](int64_t image, int64_t y0, scalar_t *const (*padded)[5]) {
        const scalar_t *x_image = x_all + image * layout.height * length;
        const scalar_t *y_image = y_all + image * layout.height * length;
        for_each_block<scalar_t, kColumnVectors>(length, [&](auto type, auto count, int64_t i) {
            using T = decltype(type);
            auto fields = [&](int64_t at, T (*values)[decltype(count)::value], int v) {
                const T x = load<T>(x_image + at), y = load<T>(y_image + at);
                values[0][v] = x;
                values[1][v] = y;
                values[2][v] = x * x;
                values[3][v] = y * y;
                values[4][v] = x * y;
            };
            blur_down_columns<T, decltype(count)::value, 5, kRowGroup>(layout.height, y0, length, i, taps, fields,
                                                                       padded);
        });
    };
    // Blurs along the row, then the SSIM and its partials: the reference's operations, in its order.
    auto finish = [&](int64_t image, int64_t y, const scalar_t *const *padded) {
        const int64_t row = (image * layout.height + y) * length;
        for_each_block<scalar_t, kBlock>(length, [&](auto type, auto count, int64_t i) {
            using T = decltype(type);
            constexpr int n = decltype(count)::value, lanes = sizeof(T) / sizeof(scalar_t);
            T moments[5][n];
            blur_along_row<T, n, 5>(padded, i, layout.stride, taps, moments);
            const T c1 = splat<T>(static_cast<scalar_t>(kC1)), c2 = splat<T>(static_cast<scalar_t>(kC2));
            const T two = splat<T>(scalar_t(2));
            for (int v = 0; v < n; ++v) {
                const int64_t at = row + i + v * lanes;
                const T mu_x = moments[0][v], mu_y = moments[1][v];
                const T sigma_xx = moments[2][v] - mu_x * mu_x;
                const T sigma_yy = moments[3][v] - mu_y * mu_y;
                const T sigma_xy = moments[4][v] - mu_x * mu_y;
                const T a = two * mu_x * mu_y + c1;
                const T b = two * sigma_xy + c2;
                const T c = mu_x * mu_x + mu_y * mu_y + c1;
                const T d = sigma_xx + sigma_yy + c2;
                const T ssim = (a * b) / (c * d);
                store(out + at, ssim);
                if (save_partials) {
                    // Chain rule through sigma_xx = E_xx - mu_x^2 and sigma_xy = E_xy - mu_x mu_y.
                    const T cd = c * d;
                    store(dm + at, two * mu_y * b / cd - two * mu_x * ssim / c + two * mu_x * ssim / d -
                                       two * a * mu_y / cd);
                    store(ds + at, -ssim / d);
                    store(dc + at, two * a / cd);
                }
            }
        });
    };
    for_each_row_group<scalar_t, 5, kRowGroup>(layout, columns, finish);
}

// kUniform: grad_map is one number broadcast (strides 0), as the gradient of a mean is.
template <typename scalar_t, bool kUniform>
void backward_impl(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window,
                   const at::Tensor &grad_map, const at::Tensor &d_mean, const at::Tensor &d_second,
                   const at::Tensor &d_cross, double l1_grad_scale, at::Tensor &grad_pred) {
    const Layout layout = layout_of(pred);
    const int64_t length = layout.length;
    const scalar_t *g = grad_map.data_ptr<scalar_t>(), *dm = d_mean.data_ptr<scalar_t>();
    const scalar_t *ds = d_second.data_ptr<scalar_t>(), *dc = d_cross.data_ptr<scalar_t>();
    const scalar_t *x_all = pred.data_ptr<scalar_t>(), *y_all = target.data_ptr<scalar_t>();
    const scalar_t *taps = window.data_ptr<scalar_t>();
    scalar_t *out = grad_pred.data_ptr<scalar_t>();
    const scalar_t scale = static_cast<scalar_t>(l1_grad_scale);

    // Blurs down the columns the upstream-weighted partials g dm, g ds, g dc (formed here).
    auto columns = [&](int64_t image, int64_t y0, scalar_t *const (*padded)[3]) {
        const int64_t offset = image * layout.height * length;
        for_each_block<scalar_t, kColumnVectors>(length, [&](auto type, auto count, int64_t i) {
            using T = decltype(type);
            auto fields = [&](int64_t at, T (*values)[decltype(count)::value], int v) {
                at += offset;
                const T upstream = kUniform ? splat<T>(g[0]) : load<T>(g + at);
                values[0][v] = upstream * load<T>(dm + at);
                values[1][v] = upstream * load<T>(ds + at);
                values[2][v] = upstream * load<T>(dc + at);
            };
            blur_down_columns<T, decltype(count)::value, 3, kRowGroup>(layout.height, y0, length, i, taps, fields,
                                                                       padded);
        });
    };
    auto finish = [&](int64_t image, int64_t y, const scalar_t *const *padded) {
        const int64_t row = (image * layout.height + y) * length;
        for_each_block<scalar_t, kBlock>(length, [&](auto type, auto count, int64_t i) {
            using T = decltype(type);
            constexpr int n = decltype(count)::value, lanes = sizeof(T) / sizeof(scalar_t);
            T spread[3][n];
            blur_along_row<T, n, 3>(padded, i, layout.stride, taps, spread);
            const T two = splat<T>(scalar_t(2)), l1_scale = splat<T>(scale);
            for (int v = 0; v < n; ++v) {
                const int64_t at = row + i + v * lanes;
                const T x = load<T>(x_all + at), y = load<T>(y_all + at);
                store(out + at, spread[0][v] + two * x * spread[1][v] + y * spread[2][v] +
                                    l1_scale * sign_of_difference(x, y));
            }
        });
    };
    for_each_row_group<scalar_t, 3, kRowGroup>(layout, columns, finish);
}

}  // namespace

// Returns (ssim_map, d_map_d_mean, d_map_d_second_moment, d_map_d_cross_moment), all shaped like pred (the three
// partials empty unless save_partials).
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

// dLoss/dpred for Loss = sum(grad_map * ssim_map) + l1_grad_scale * sum(|pred - target|); grad_map shaped like pred,
// contiguous or one number broadcast (strides 0: the gradient of a mean, without a tensor to fill and read).
at::Tensor cpu_l1_ssim_backward(const at::Tensor &pred, const at::Tensor &target, const at::Tensor &window,
                                const at::Tensor &grad_map, const at::Tensor &d_mean, const at::Tensor &d_second,
                                const at::Tensor &d_cross, double l1_grad_scale) {
    check_inputs(pred, target, window);
    bool uniform = !grad_map.is_contiguous();  // and every value at one address:
    for (int64_t d = 0; d < grad_map.dim(); ++d) {
        uniform = uniform && (grad_map.size(d) == 1 || grad_map.stride(d) == 0);
    }
    if (uniform) {
        TORCH_CHECK(grad_map.device().is_cpu() && grad_map.sizes() == pred.sizes() &&
                        grad_map.scalar_type() == pred.scalar_type(),
                    "a broadcast grad_map must be a CPU tensor of pred's shape and dtype");
    } else {
        check_planes(grad_map, pred, "grad_map");
    }
    check_planes(d_mean, pred, "d_map_d_mean");
    check_planes(d_second, pred, "d_map_d_second_moment");
    check_planes(d_cross, pred, "d_map_d_cross_moment");
    at::Tensor grad_pred = at::empty_like(pred);
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "cpu_l1_ssim_backward", [&] {
        if (uniform) {
            backward_impl<scalar_t, true>(pred, target, window, grad_map, d_mean, d_second, d_cross, l1_grad_scale,
                                          grad_pred);
        } else {
            backward_impl<scalar_t, false>(pred, target, window, grad_map, d_mean, d_second, d_cross, l1_grad_scale,
                                           grad_pred);
        }
    });
    return grad_pred;
}

}  // namespace splat2splat

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
    module.def("forward", &splat2splat::cpu_ssim_forward,
               "SSIM map of [P, H, W] planes or [B, H, W, C] images (+ partials for backward)", py::arg("pred"),
               py::arg("target"), py::arg("window"), py::arg("save_partials"));
    module.def("backward", &splat2splat::cpu_l1_ssim_backward,
               "dLoss/dpred for sum(grad_map * ssim_map) + l1_grad_scale * sum(|pred - target|)", py::arg("pred"),
               py::arg("target"), py::arg("window"), py::arg("grad_map"), py::arg("d_map_d_mean"),
               py::arg("d_map_d_second_moment"), py::arg("d_map_d_cross_moment"), py::arg("l1_grad_scale"));
}

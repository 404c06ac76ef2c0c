// CPU tile compositing of projected Gaussians, forward and backward (gsplat 1.5.3's "classic" rasterize_to_pixels).
// Loaded by splat2splat/kernels/cpu_rasterizer.py (torch.utils.cpp_extension.load) as splat2splat_cpu_rasterizer.
//
// The arithmetic mirrors the pure-PyTorch reference (splat2splat/gaussians/rasterize.py, pixel_pairs.py) operation
// by operation, in the inputs' dtype where the reference computes in it, so that both blend the same
// (pixel, Gaussian) pairs:
//   tiles:   gsplat's isect_tiles box floor((m - r) / ts) .. ceil((m + r) / ts), Gaussians sorted by depth
//            (ties by index);
//   alpha:   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, alpha = min(0.999, o exp(-sigma)), skipped when sigma < 0 or
//            alpha < 1/255;
//   stop:    before the pair after which the transmittance (a float64 product) would be <= 1e-4.
// Work is skipped only where it provably changes nothing: pixels outside a Gaussian's radius box (plus a pixel),
// and the exponential where sigma exceeds ln(255 o) by more than rounding could explain.
// Tiles run in parallel (OpenMP, torch's thread count). The backward walks each pixel's pairs again front to back
// (exact alphas and transmittances, no division), then back to front with the running sum of later weights; each
// tile's per-Gaussian sums are added into the gradients in a fixed order (deterministic for any thread count).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace splat2splat {
namespace {

constexpr double kAlphaThreshold = 1.0 / 255.0;
constexpr double kMaxAlpha = 0.999;
constexpr double kTransmittanceMin = 1e-4;
constexpr int kMaxChannels = 32;

struct TileGrid {
    int64_t width, height, tile_size, tiles_x, tiles_y;
    int64_t count() const { return tiles_x * tiles_y; }
};

// Per Gaussian of one tile's list: what the alpha needs, gathered once per tile (cache friendly).
template <typename scalar_t> struct Splat {
    scalar_t mx, my, a, b, c, opacity;
    // Beyond this sigma, alpha = o exp(-sigma) < 1/255 for certain: ln(255 o) plus a margin far above the few ulps
    // by which exp and the product can err. Skips the exponential where most candidates are.
    scalar_t sigma_cut;
    // Pixel centres outside this box (the projection's radius, which bounds alpha >= 1/255, widened by a pixel
    // against rounding) are skipped without evaluating sigma.
    scalar_t x_lo, x_hi, y_lo, y_hi;
};

template <typename scalar_t> struct Alpha {
    scalar_t alpha, sigma, dx, dy, falloff;
    bool blended;
};

// The reference's _alpha_parts, operation by operation (no contraction into FMAs: see the build flags).
template <typename scalar_t> inline Alpha<scalar_t> evaluate(const Splat<scalar_t> &s, scalar_t px, scalar_t py) {
    Alpha<scalar_t> r;
    r.dx = s.mx - px;
    r.dy = s.my - py;
    const scalar_t t1 = s.a * (r.dx * r.dx);
    const scalar_t t2 = s.c * (r.dy * r.dy);
    const scalar_t t3 = (s.b * r.dx) * r.dy;
    r.sigma = scalar_t(0.5) * (t1 + t2) + t3;
    if (!(r.sigma >= scalar_t(0) && r.sigma <= s.sigma_cut)) {
        r.blended = false;
        return r;
    }
    r.falloff = std::exp(-r.sigma);
    const scalar_t raw = s.opacity * r.falloff;
    r.alpha = std::min(raw, scalar_t(kMaxAlpha));
    r.blended = r.sigma >= scalar_t(0) && r.alpha >= scalar_t(kAlphaThreshold);
    return r;
}

// Tile lists: for every tile, the visible Gaussians whose tile box covers it, front to back (CSR layout).
template <typename scalar_t>
void tile_lists(
    const scalar_t *means2d, const int32_t *radii, const scalar_t *depths, int64_t n, const TileGrid &grid,
    std::vector<int64_t> &offsets, std::vector<int32_t> &ids
) {
    std::vector<int32_t> order;
    order.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
        if (radii[2 * i] > 0 && radii[2 * i + 1] > 0 && std::isfinite(means2d[2 * i]) &&
            std::isfinite(means2d[2 * i + 1]))
            order.push_back(static_cast<int32_t>(i));
    }
    std::stable_sort(order.begin(), order.end(), [&](int32_t p, int32_t q) { return depths[p] < depths[q]; });
    const int64_t visible = static_cast<int64_t>(order.size());
    std::vector<int32_t> box(4 * visible);  // tx0, tx1, ty0, ty1
    const scalar_t ts = static_cast<scalar_t>(grid.tile_size);
    auto clamp_tile = [](scalar_t value, int64_t tiles) {
        return static_cast<int32_t>(std::min<scalar_t>(std::max<scalar_t>(value, 0), static_cast<scalar_t>(tiles)));
    };
    for (int64_t k = 0; k < visible; ++k) {
        const int64_t i = order[k];
        // As _tile_boxes: the centre in the means' dtype, the radius as float32 (radii.float() / tile_size).
        const scalar_t cx = means2d[2 * i] / ts, cy = means2d[2 * i + 1] / ts;
        const float tile = static_cast<float>(grid.tile_size);
        const scalar_t rx = static_cast<scalar_t>(static_cast<float>(radii[2 * i]) / tile);
        const scalar_t ry = static_cast<scalar_t>(static_cast<float>(radii[2 * i + 1]) / tile);
        box[4 * k + 0] = clamp_tile(std::floor(cx - rx), grid.tiles_x);
        box[4 * k + 1] = clamp_tile(std::ceil(cx + rx), grid.tiles_x);
        box[4 * k + 2] = clamp_tile(std::floor(cy - ry), grid.tiles_y);
        box[4 * k + 3] = clamp_tile(std::ceil(cy + ry), grid.tiles_y);
    }
    offsets.assign(grid.count() + 1, 0);
    for (int64_t k = 0; k < visible; ++k)
        for (int32_t ty = box[4 * k + 2]; ty < box[4 * k + 3]; ++ty)
            for (int32_t tx = box[4 * k + 0]; tx < box[4 * k + 1]; ++tx) ++offsets[ty * grid.tiles_x + tx + 1];
    std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
    ids.resize(offsets.back());
    std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
    for (int64_t k = 0; k < visible; ++k)  // front to back: each tile's list stays sorted
        for (int32_t ty = box[4 * k + 2]; ty < box[4 * k + 3]; ++ty)
            for (int32_t tx = box[4 * k + 0]; tx < box[4 * k + 1]; ++tx)
                ids[cursor[ty * grid.tiles_x + tx]++] = order[k];
}

template <typename scalar_t>
void gather_splats(
    const int32_t *list, int64_t length, const scalar_t *means2d, const scalar_t *conics, const scalar_t *opacities,
    const int32_t *radii, std::vector<Splat<scalar_t>> &out
) {
    out.resize(length);
    for (int64_t j = 0; j < length; ++j) {
        const int64_t g = list[j];
        const double cut = std::log(255.0 * static_cast<double>(opacities[g])) + 1e-4;
        const double mx = means2d[2 * g], my = means2d[2 * g + 1];
        const double rx = radii[2 * g] * (1.0 + 1e-3) + 1.0, ry = radii[2 * g + 1] * (1.0 + 1e-3) + 1.0;
        out[j] = {means2d[2 * g], means2d[2 * g + 1], conics[3 * g], conics[3 * g + 1], conics[3 * g + 2], opacities[g],
                  static_cast<scalar_t>(cut), static_cast<scalar_t>(mx - rx), static_cast<scalar_t>(mx + rx),
                  static_cast<scalar_t>(my - ry), static_cast<scalar_t>(my + ry)};
    }
}

// The entries of a tile's list whose box holds the pixel row at height py, in list order.
template <typename scalar_t>
void row_candidates(const std::vector<Splat<scalar_t>> &splats, scalar_t py, std::vector<int32_t> &out) {
    out.clear();
    for (int32_t j = 0; j < static_cast<int32_t>(splats.size()); ++j)
        if (splats[j].y_lo <= py && py <= splats[j].y_hi) out.push_back(j);
}

template <typename scalar_t> inline bool outside(const Splat<scalar_t> &s, scalar_t px) {
    return px < s.x_lo || px > s.x_hi;
}

TileGrid make_grid(int64_t width, int64_t height, int64_t tile_size) {
    TORCH_CHECK(width > 0 && height > 0 && tile_size > 0, "image and tile sizes must be positive");
    return {width, height, tile_size, (width + tile_size - 1) / tile_size, (height + tile_size - 1) / tile_size};
}

void check(const at::Tensor &t, const at::Tensor &like, const char *name, int64_t dim, int64_t last) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ", t.sizes());
    TORCH_CHECK(last < 0 || t.size(-1) == last, name, " must have ", last, " entries in its last dimension");
    TORCH_CHECK(t.size(0) == like.size(0), name, " has ", t.size(0), " rows, expected ", like.size(0));
    TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " dtype differs from means2d");
}

void check_inputs(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors
) {
    TORCH_CHECK(
        means2d.scalar_type() == at::kFloat || means2d.scalar_type() == at::kDouble,
        "the CPU rasterizer supports float32 and float64, got ", means2d.scalar_type()
    );
    check(means2d, means2d, "means2d", 2, 2);
    check(conics, means2d, "conics", 2, 3);
    check(opacities, means2d, "opacities", 1, -1);
    check(colors, means2d, "colors", 2, -1);
    TORCH_CHECK(colors.size(1) <= kMaxChannels, "at most ", kMaxChannels, " colour channels, got ", colors.size(1));
}

template <typename scalar_t>
void forward_impl(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &depths, const TileGrid &grid, at::Tensor &image, at::Tensor &alpha_out,
    at::Tensor &walked, at::Tensor &offsets_out, at::Tensor &ids_out
) {
    const int64_t n = means2d.size(0), channels = colors.size(1);
    const int64_t width = grid.width, height = grid.height, tile_size = grid.tile_size;
    std::vector<int64_t> offsets;
    std::vector<int32_t> ids;
    tile_lists<scalar_t>(means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(), depths.data_ptr<scalar_t>(),
                         n, grid, offsets, ids);
    const scalar_t *m = means2d.data_ptr<scalar_t>(), *con = conics.data_ptr<scalar_t>();
    const scalar_t *opa = opacities.data_ptr<scalar_t>(), *col = colors.data_ptr<scalar_t>();
    const int32_t *rad = radii.data_ptr<int32_t>();
    scalar_t *img = image.data_ptr<scalar_t>(), *acc = alpha_out.data_ptr<scalar_t>();
    int32_t *walk = walked.data_ptr<int32_t>();
#pragma omp parallel num_threads(at::get_num_threads())
    {
        std::vector<Splat<scalar_t>> splats;
        std::vector<scalar_t> tile_colors;
        std::vector<int32_t> row;
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < grid.count(); ++tile) {
            const int32_t *list = ids.data() + offsets[tile];
            const int64_t length = offsets[tile + 1] - offsets[tile];
            if (length == 0) continue;
            gather_splats(list, length, m, con, opa, rad, splats);
            tile_colors.resize(length * channels);
            for (int64_t j = 0; j < length; ++j)
                for (int64_t k = 0; k < channels; ++k) tile_colors[j * channels + k] = col[list[j] * channels + k];
            const int64_t x0 = (tile % grid.tiles_x) * tile_size, y0 = (tile / grid.tiles_x) * tile_size;
            for (int64_t y = y0; y < std::min(y0 + tile_size, height); ++y) {
                const scalar_t py = static_cast<scalar_t>(y) + scalar_t(0.5);
                row_candidates(splats, py, row);
                for (int64_t x = x0; x < std::min(x0 + tile_size, width); ++x) {
                    const scalar_t px = static_cast<scalar_t>(x) + scalar_t(0.5);
                    double transmittance = 1.0, pixel[kMaxChannels] = {0.0}, accumulated = 0.0;
                    int64_t end = 0;
                    for (const int32_t j : row) {
                        if (outside(splats[j], px)) continue;
                        const Alpha<scalar_t> r = evaluate(splats[j], px, py);
                        if (!r.blended) continue;
                        const double keep = 1.0 - static_cast<double>(r.alpha);
                        if (transmittance * keep <= kTransmittanceMin) break;
                        const scalar_t weight = r.alpha * static_cast<scalar_t>(transmittance);
                        for (int64_t k = 0; k < channels; ++k)
                            pixel[k] += static_cast<double>(weight * tile_colors[j * channels + k]);
                        accumulated += static_cast<double>(weight);
                        transmittance *= keep;
                        end = j + 1;
                    }
                    const int64_t p = y * width + x;
                    for (int64_t k = 0; k < channels; ++k) img[p * channels + k] = static_cast<scalar_t>(pixel[k]);
                    acc[p] = static_cast<scalar_t>(accumulated);
                    walk[p] = static_cast<int32_t>(end);
                }
            }
        }
    }
    offsets_out = at::from_blob(offsets.data(), {static_cast<int64_t>(offsets.size())}, at::kLong).clone();
    ids_out = at::from_blob(ids.data(), {static_cast<int64_t>(ids.size())}, at::kInt).clone();
}

template <typename scalar_t>
void backward_impl(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &offsets, const at::Tensor &ids, const at::Tensor &walked,
    const at::Tensor &grad_image, const at::Tensor &grad_alpha, const TileGrid &grid, at::Tensor &sums
) {
    const int64_t channels = colors.size(1), stride = 6 + channels;
    const int64_t width = grid.width, height = grid.height, tile_size = grid.tile_size;
    const scalar_t *m = means2d.data_ptr<scalar_t>(), *con = conics.data_ptr<scalar_t>();
    const scalar_t *opa = opacities.data_ptr<scalar_t>(), *col = colors.data_ptr<scalar_t>();
    const scalar_t *gimg = grad_image.data_ptr<scalar_t>(), *galpha = grad_alpha.data_ptr<scalar_t>();
    const int64_t *off = offsets.data_ptr<int64_t>();
    const int32_t *list_all = ids.data_ptr<int32_t>(), *walk = walked.data_ptr<int32_t>();
    const int32_t *rad = radii.data_ptr<int32_t>();
    // Each tile's per-Gaussian sums go to its own rows (one per tile-list entry), then are added up per Gaussian in
    // a fixed order: the gradients do not depend on the thread count or schedule.
    const int64_t n_entries = off[grid.count()];
    std::vector<scalar_t> entry_sums(n_entries * stride);
#pragma omp parallel num_threads(at::get_num_threads())
    {
        std::vector<Splat<scalar_t>> splats;
        std::vector<double> tile_sums;
        std::vector<int32_t> row;
        struct Pair {
            int64_t j;
            Alpha<scalar_t> r;
            scalar_t transmittance;
        };
        std::vector<Pair> pairs;
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < grid.count(); ++tile) {
            const int32_t *list = list_all + off[tile];
            const int64_t length = off[tile + 1] - off[tile];
            if (length == 0) continue;
            gather_splats(list, length, m, con, opa, rad, splats);
            tile_sums.assign(length * stride, 0.0);
            const int64_t x0 = (tile % grid.tiles_x) * tile_size, y0 = (tile / grid.tiles_x) * tile_size;
            for (int64_t y = y0; y < std::min(y0 + tile_size, height); ++y) {
                const scalar_t py = static_cast<scalar_t>(y) + scalar_t(0.5);
                row_candidates(splats, py, row);
                for (int64_t x = x0; x < std::min(x0 + tile_size, width); ++x) {
                    const int64_t p = y * width + x, end = walk[p];
                    if (end == 0) continue;
                    const scalar_t px = static_cast<scalar_t>(x) + scalar_t(0.5);
                    // The forward's pairs again, with their alphas and transmittances.
                    pairs.clear();
                    double transmittance = 1.0;
                    for (const int32_t j : row) {
                        if (j >= end) break;
                        if (outside(splats[j], px)) continue;
                        const Alpha<scalar_t> r = evaluate(splats[j], px, py);
                        if (!r.blended) continue;
                        pairs.push_back({j, r, static_cast<scalar_t>(transmittance)});
                        transmittance *= 1.0 - static_cast<double>(r.alpha);
                    }
                    const scalar_t *grad_color = gimg + p * channels;
                    const scalar_t grad_weight = galpha[p];
                    double later = 0.0;  // sum over later pairs of weight * dL/dweight
                    for (auto pair = pairs.rbegin(); pair != pairs.rend(); ++pair) {
                        const Splat<scalar_t> &s = splats[pair->j];
                        const Alpha<scalar_t> &r = pair->r;
                        const int64_t g = list[pair->j];
                        const scalar_t weight = r.alpha * pair->transmittance;
                        scalar_t value = grad_weight;  // dL/dweight
                        for (int64_t k = 0; k < channels; ++k) value += col[g * channels + k] * grad_color[k];
                        const scalar_t d_alpha = pair->transmittance * value -
                            static_cast<scalar_t>(later / (1.0 - static_cast<double>(r.alpha)));
                        later += static_cast<double>(weight * value);
                        double *slot = tile_sums.data() + pair->j * stride;
                        for (int64_t k = 0; k < channels; ++k)
                            slot[6 + k] += static_cast<double>(weight * grad_color[k]);
                        // Back through alpha = min(0.999, o exp(-sigma)) (no gradient where clamped).
                        if (!(s.opacity * r.falloff <= scalar_t(kMaxAlpha))) continue;
                        const scalar_t d_sigma = -(d_alpha * s.opacity) * r.falloff;
                        slot[0] += static_cast<double>(d_sigma * (s.a * r.dx + s.b * r.dy));
                        slot[1] += static_cast<double>(d_sigma * (s.c * r.dy + s.b * r.dx));
                        slot[2] += static_cast<double>(d_sigma * scalar_t(0.5) * (r.dx * r.dx));
                        slot[3] += static_cast<double>(d_sigma * r.dx * r.dy);
                        slot[4] += static_cast<double>(d_sigma * scalar_t(0.5) * (r.dy * r.dy));
                        slot[5] += static_cast<double>(d_alpha * r.falloff);
                    }
                }
            }
            scalar_t *entries = entry_sums.data() + off[tile] * stride;
            for (int64_t k = 0; k < length * stride; ++k) entries[k] = static_cast<scalar_t>(tile_sums[k]);
        }
    }
    double *out = sums.data_ptr<double>();
    for (int64_t e = 0; e < n_entries; ++e) {
        double *target = out + static_cast<int64_t>(list_all[e]) * stride;
        const scalar_t *entry = entry_sums.data() + e * stride;
        for (int64_t k = 0; k < stride; ++k) target[k] += static_cast<double>(entry[k]);
    }
}

void check_radii(const at::Tensor &radii, const at::Tensor &means2d) {
    TORCH_CHECK(radii.scalar_type() == at::kInt && radii.is_contiguous() && radii.dim() == 2 && radii.size(1) == 2 &&
                    radii.size(0) == means2d.size(0),
                "radii must be a contiguous [N, 2] int32 tensor");
}

}  // namespace

// Returns image [H, W, K], accumulated alpha [H, W] and what the backward needs: tile offsets [T + 1] (int64),
// tile lists (int32 Gaussian ids) and per pixel the length of the list prefix it walked (int32).
std::vector<at::Tensor> rasterize_forward(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &depths, int64_t width, int64_t height, int64_t tile_size
) {
    check_inputs(means2d, conics, opacities, colors);
    check(depths, means2d, "depths", 1, -1);
    check_radii(radii, means2d);
    const TileGrid grid = make_grid(width, height, tile_size);
    const int64_t n = means2d.size(0), channels = colors.size(1);
    at::Tensor image = at::zeros({height, width, channels}, colors.options());
    at::Tensor alpha_out = at::zeros({height, width}, colors.options());
    at::Tensor walked = at::zeros({height * width}, radii.options());
    at::Tensor offsets_out, ids_out;
    AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_forward", [&] {
        forward_impl<scalar_t>(means2d, conics, opacities, colors, radii, depths, grid, image, alpha_out, walked,
                               offsets_out, ids_out);
    });
    return {image, alpha_out, offsets_out, ids_out, walked};
}

// Gradients of the forward's image and alpha with respect to means2d [N, 2], conics [N, 3], opacities [N] and
// colors [N, K]; grad_image [H, W, K] and grad_alpha [H, W].
std::vector<at::Tensor> rasterize_backward(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &offsets, const at::Tensor &ids, const at::Tensor &walked,
    const at::Tensor &grad_image, const at::Tensor &grad_alpha, int64_t width, int64_t height, int64_t tile_size
) {
    check_inputs(means2d, conics, opacities, colors);
    TORCH_CHECK(grad_image.is_contiguous() && grad_image.sizes() == at::IntArrayRef({height, width, colors.size(1)}) &&
                    grad_image.scalar_type() == colors.scalar_type(),
                "grad_image must be a contiguous [H, W, K] tensor of the colours' dtype");
    TORCH_CHECK(grad_alpha.is_contiguous() && grad_alpha.sizes() == at::IntArrayRef({height, width}) &&
                    grad_alpha.scalar_type() == colors.scalar_type(),
                "grad_alpha must be a contiguous [H, W] tensor of the colours' dtype");
    const TileGrid grid = make_grid(width, height, tile_size);
    TORCH_CHECK(offsets.numel() == grid.count() + 1 && walked.numel() == width * height, "saved tile lists do not fit");
    check_radii(radii, means2d);
    const int64_t n = means2d.size(0), channels = colors.size(1), stride = 6 + channels;
    // Per Gaussian: means2d (2), conic (3), opacity (1), colour (K), summed in float64.
    at::Tensor sums = at::zeros({n, stride}, means2d.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_backward", [&] {
        backward_impl<scalar_t>(means2d, conics, opacities, colors, radii, offsets, ids, walked, grad_image,
                                grad_alpha, grid, sums);
    });
    at::Tensor grads = sums.to(means2d.scalar_type());
    return {grads.slice(1, 0, 2).contiguous(), grads.slice(1, 2, 5).contiguous(), grads.select(1, 5).contiguous(),
            grads.slice(1, 6, stride).contiguous()};
}

}  // namespace splat2splat

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
    module.def("forward", &splat2splat::rasterize_forward, "CPU tile compositing: image, alpha and saved tile lists");
    module.def("backward", &splat2splat::rasterize_backward, "Gradients of the CPU tile compositing");
}

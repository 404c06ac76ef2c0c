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
// Work is skipped only where it provably changes nothing: rows of a tile that a Gaussian's sigma <= ln(255 o) ellipse
// misses (plus a margin far above rounding), pixels outside its radius box (plus a pixel); beyond that cut, alpha
// is below 1/255 for certain.
// Each Gaussian is evaluated against 16 pixels of a tile row at once (branch-free loops the compiler vectorises;
// for float32 an exp within ~2 ulp like PyTorch's SIMD one, for float64 std::exp), kBlock Gaussians before blending,
// kInterleave of them side by side (independent dependency chains the out-of-order core can overlap). With RGB
// colours the channel count is a compile-time constant (the pixels' sums stay in registers).
// Forward and backward share one loop over tiles, rows and lane groups (for_each_lane_group; OpenMP across tiles,
// torch's thread count). The backward walks each pixel's pairs again front to back (exact alphas and
// transmittances, no division), then back to front with the running sum of later weights; its per-Gaussian parts
// are summed per lane over a tile's rows, then over the lanes, and the tiles' sums are added into the gradients in
// a fixed order (deterministic for any thread count).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <bit>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// Pixels of a tile row are processed kLanes at a time, each Gaussian against all of them at once: the loops over lanes
// have no branches (masks instead), so the compiler vectorises them.
constexpr int kLanes = 16;

// exp for float lanes: range reduction by ln 2 and Cephes' polynomial (within ~2 ulp of expf, like the
// SIMD exp PyTorch uses; without branches, so it vectorises). Only arguments in [-88, 0] matter here.
inline float lane_exp(float x) {
    x = std::min(std::max(x, -87.0f), 0.0f);
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = (p * (r * r) + r) + 1.0f;
    return y * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}
inline double lane_exp(double x) { return std::exp(x); }

// The exponent of a lane that does not blend (see evaluate_lanes).
template <typename scalar_t> constexpr scalar_t kMasked = scalar_t(-40);

// A Gaussian against the lanes of a pixel row: alpha where it blends (sigma in [0, cut], pixel inside the box,
// alpha >= 1/255), else 0, and its parts.
template <typename scalar_t> struct alignas(64) LaneAlphas {
    scalar_t alpha[kLanes], falloff[kLanes], dx[kLanes], dy[kLanes];
};

// Gaussians evaluated at once, their operations interleaved (evaluate_lanes): one Gaussian's evaluation is a chain
// of ~40 dependent vector operations (sigma, masks, the exp's polynomial) that the out-of-order core could not
// overlap with the next one's (its floating-point scheduler fills up with the waiting chain); with four chains side
// by side in the instruction stream an evaluation took ~5x less time on an AMD EPYC (Zen 5).
constexpr int kInterleave = 4;

// A Gaussian that blends no pixel (its box is empty): pads a group of kInterleave evaluations.
template <typename scalar_t> const Splat<scalar_t> kNoSplat = {
    0, 0, 0, 0, 0, 0, 0, std::numeric_limits<scalar_t>::infinity(), -std::numeric_limits<scalar_t>::infinity(), 0, 0};

// kInterleave Gaussians (entries j of the tile's list) against the lanes of a pixel row (pixel centres px0 + i, height
// py); lane i asks only for entries j < limit[i]. The reference's _alpha_parts, operation by operation (no
// contraction into FMAs: see the build flags), each step for all kInterleave Gaussians before the next.
template <typename scalar_t>
inline void evaluate_lanes(const Splat<scalar_t> *const *splats, const int32_t *j, scalar_t px0, scalar_t py,
                           const int32_t *limit, LaneAlphas<scalar_t> *out) {
    scalar_t exponent[kInterleave][kLanes];
    for (int g = 0; g < kInterleave; ++g) {
        const Splat<scalar_t> &s = *splats[g];
        for (int i = 0; i < kLanes; ++i) {
            const scalar_t px = px0 + static_cast<scalar_t>(i);
            const scalar_t dx = s.mx - px, dy = s.my - py;
            const scalar_t t1 = s.a * (dx * dx);
            const scalar_t t2 = s.c * (dy * dy);
            const scalar_t t3 = (s.b * dx) * dy;
            const scalar_t sigma = scalar_t(0.5) * (t1 + t2) + t3;
            // Selects rather than branches, so that the loop vectorises: a lane that is not a candidate gets an
            // exponent whose alpha is far below 1/255 (exp(-40) ~ 4e-18) yet a normal float: exp(-87) times an
            // opacity is subnormal, and subnormal arithmetic made these loops ~25 % slower.
            scalar_t e = -sigma;
            e = (sigma >= scalar_t(0)) ? e : kMasked<scalar_t>;
            e = (sigma <= s.sigma_cut) ? e : kMasked<scalar_t>;
            e = (px >= s.x_lo) ? e : kMasked<scalar_t>;
            e = (px <= s.x_hi) ? e : kMasked<scalar_t>;
            e = (j[g] < limit[i]) ? e : kMasked<scalar_t>;
            exponent[g][i] = e;
            out[g].dx[i] = dx;
            out[g].dy[i] = dy;
        }
    }
    for (int g = 0; g < kInterleave; ++g)
        for (int i = 0; i < kLanes; ++i) out[g].falloff[i] = lane_exp(exponent[g][i]);
    for (int g = 0; g < kInterleave; ++g) {
        const scalar_t opacity = splats[g]->opacity;
        for (int i = 0; i < kLanes; ++i) {
            const scalar_t alpha = std::min(opacity * out[g].falloff[i], scalar_t(kMaxAlpha));
            out[g].alpha[i] = (alpha >= scalar_t(kAlphaThreshold)) ? alpha : scalar_t(0);  // 0: not blended
        }
    }
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

// The entries of a tile's list that can blend a pixel of the row at height py between the pixel centres x_first and
// x_last, in list order: their box holds the row, and their ellipse sigma <= cut crosses it inside [x_first, x_last].
// On a row, sigma(dx) = a/2 dx^2 + b dy dx + c/2 dy^2 is a parabola in dx; the test solves it in float64 with a
// margin far beyond the rounding of the lanes' float sigma, so that it only drops entries that blend nowhere there.
// Entries whose parabola is not a regular one (a <= 0, or a value not finite) are kept.
// The tile's splats are copied once into one float64 array per quantity, and the test is a loop without branches
// over them (it vectorises; with a branch per entry and a scalar sqrt it was ~20 % of the forward's profile). The
// kept entries are written branch-free too.
struct RowCull {
    std::vector<double> mx, my, a, b, c, cut, y_lo, y_hi;
    std::vector<int32_t> keep;

    template <typename scalar_t> void gather(const std::vector<Splat<scalar_t>> &splats) {
        const size_t n = splats.size();
        for (auto *v : {&mx, &my, &a, &b, &c, &cut, &y_lo, &y_hi}) v->resize(n);
        keep.resize(n);
        for (size_t j = 0; j < n; ++j) {
            const Splat<scalar_t> &s = splats[j];
            mx[j] = s.mx, my[j] = s.my, a[j] = s.a, b[j] = s.b, c[j] = s.c, cut[j] = s.sigma_cut;
            y_lo[j] = s.y_lo, y_hi[j] = s.y_hi;
        }
    }

    void candidates(double py, double x_first, double x_last, std::vector<int32_t> &out) {
        const int32_t n = static_cast<int32_t>(keep.size());
        constexpr double kHuge = std::numeric_limits<double>::max();  // |v| <= kHuge: v is finite
        for (int32_t j = 0; j < n; ++j) {
            const double dy = my[j] - py, half_b = b[j] * dy;
            const bool regular = (a[j] > 0.0) & (std::abs(a[j]) <= kHuge) & (std::abs(half_b) <= kHuge) &
                                 (std::abs(cut[j]) <= kHuge);
            // Rounding of the float sigma is relative to its terms (a dx^2 ~ (b dy)^2 / a near the vertex).
            const double slack =
                1e-3 * (1.0 + std::abs(cut[j])) + 1e-5 * (std::abs(c[j]) * dy * dy + half_b * half_b / a[j]);
            // a/2 dx^2 + (b dy) dx + (c/2 dy^2 - cut - slack) <= 0
            const double rest = 0.5 * c[j] * dy * dy - cut[j] - slack;
            const double discriminant = half_b * half_b - 2.0 * a[j] * rest;
            const double root = std::sqrt(std::max(discriminant, 0.0));
            const double dx_lo = (-half_b - root) / a[j], dx_hi = (-half_b + root) / a[j];
            // px = mx - dx
            const double px_lo = mx[j] - dx_hi - 1e-3, px_hi = mx[j] - dx_lo + 1e-3;
            const bool crosses = !(discriminant < 0.0) & !(px_hi < x_first) & !(px_lo > x_last);
            keep[j] = (y_lo[j] <= py) & (py <= y_hi[j]) & (!regular | crosses);
        }
        out.resize(n);
        int32_t kept = 0;
        for (int32_t j = 0; j < n; ++j) {
            out[kept] = j;
            kept += keep[j];
        }
        out.resize(kept);
    }
};

// Front-to-back step of the lanes' pixels over one Gaussian (alpha 0: not blended; lanes no longer running ignore
// it): the weight it gets, and a pixel stops (before it) where it would bring the transmittance to <= 1e-4.
// Separate arrays (restrict): it vectorises.
template <typename scalar_t>
inline void blend_lanes(const scalar_t *__restrict alpha, double *__restrict transmittance,
                        scalar_t *__restrict accumulated, int32_t *__restrict running, int32_t *__restrict end,
                        scalar_t *__restrict weights, int32_t j) {
    for (int i = 0; i < kLanes; ++i) {
        const double before = transmittance[i];
        const double after = before * (1.0 - static_cast<double>(alpha[i]));
        const bool blended = (alpha[i] > scalar_t(0)) & (running[i] != 0);
        const bool stops = blended & (after <= kTransmittanceMin);
        const bool blends = blended & (after > kTransmittanceMin);
        running[i] = stops ? 0 : running[i];
        const scalar_t weight = alpha[i] * static_cast<scalar_t>(before);
        weights[i] = blends ? weight : scalar_t(0);
        accumulated[i] += weights[i];
        transmittance[i] = blends ? after : before;
        end[i] = blends ? j + 1 : end[i];
    }
}

// Sum of the lanes in a fixed pairwise order (vectorises; deterministic); overwrites them.
template <typename scalar_t> inline double lane_sum(scalar_t *lanes) {
    for (int width = kLanes / 2; width >= 1; width /= 2)
        for (int i = 0; i < width; ++i) lanes[i] += lanes[i + width];
    return static_cast<double>(lanes[0]);
}

#if defined(__AVX512F__)
// lane_sum of 16 consecutive rows of 16 floats at once, into out[16]: the same additions in the same order, done for
// the 16 rows side by side (a few shuffles per step instead of a reduction per row; these sums were ~8 % of the
// backward). Each step adds a row's upper half to its lower half: 16 rows of 16 -> 8 vectors of two rows' 8 ->
// 4 of four rows' 4 -> 2 of eight rows' 2 -> 1 of the 16 sums, row 4 j + k in element 4 k + j.
inline void lane_sums_16(const float *rows, float *out) {
    static_assert(kLanes == 16);
    __m512 eights[8], fours[4], twos[2];
    for (int p = 0; p < 8; ++p) {
        const __m512 a = _mm512_loadu_ps(rows + 32 * p), b = _mm512_loadu_ps(rows + 32 * p + 16);
        eights[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int p = 0; p < 4; ++p) {
        const __m512 a = eights[2 * p], b = eights[2 * p + 1];
        fours[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    for (int p = 0; p < 2; ++p) {
        const __m512 a = fours[2 * p], b = fours[2 * p + 1];
        twos[p] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(twos[0], twos[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_ps(twos[0], twos[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i row_order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(row_order, sums));
}
#endif

// Whether a Gaussian's pixel box misses the lanes' pixel centres px0 .. px0 + kLanes - 1 entirely.
template <typename scalar_t> inline bool misses(const Splat<scalar_t> &s, scalar_t px0) {
    return s.x_hi < px0 || s.x_lo > px0 + static_cast<scalar_t>(kLanes - 1);
}

// Candidates are evaluated kBlock at a time before any of them is blended: the forward and the backward walk a row's
// candidates with the same next_block, and the evaluations, independent of each other, are not interleaved with
// the blend's dependency chain (a lane that stops inside a block ignores the rest of it).
constexpr int kBlock = 8;

template <typename scalar_t> struct CandidateBlock {
    int count = 0;
    int32_t j[kBlock];  // entries of the tile's list, in list order
    LaneAlphas<scalar_t> lanes[kBlock];
};
static_assert(kBlock % kInterleave == 0);

// The next candidates of a row from position `next` on, up to kBlock of them and only entries j < j_end: each lane i
// asks only for entries j < limit[i] (a lane that does not ask gets alpha 0). Returns the position after the last
// one taken; block.count 0 when the row is done.
template <typename scalar_t>
size_t next_block(const std::vector<Splat<scalar_t>> &splats, const std::vector<int32_t> &row, size_t next,
                  scalar_t px0, scalar_t py, const int32_t *limit, int32_t j_end, CandidateBlock<scalar_t> &block) {
    const Splat<scalar_t> *chosen[kBlock];
    int count = 0;
    for (; next < row.size() && count < kBlock; ++next) {
        const int32_t j = row[next];
        if (j >= j_end) {
            next = row.size();
            break;
        }
        if (misses(splats[j], px0)) continue;
        block.j[count] = j;
        chosen[count++] = &splats[j];
    }
    block.count = count;
    for (int b = count; b < kBlock && b % kInterleave != 0; ++b) {  // pad the last group: no lane asks for INT32_MAX
        block.j[b] = INT32_MAX;
        chosen[b] = &kNoSplat<scalar_t>;
    }
    for (int b = 0; b < count; b += kInterleave)
        evaluate_lanes(chosen + b, block.j + b, px0, py, limit, block.lanes + b);
    return next;
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

// A group of up to kLanes pixels of one tile row: the pixels y * width + x .. + lanes - 1.
template <typename scalar_t> struct LaneGroup {
    int64_t y, x;
    int lanes;         // pixels inside the image
    scalar_t px0, py;  // centre of the first pixel
};

// The loop the forward and the backward share: tiles in parallel (OpenMP, torch's thread count; dynamic schedule,
// so results must not depend on which thread takes a tile), each tile's splats gathered, its rows' candidates
// culled, and then for every lane group visitor.lanes(group, splats, row). make_visitor() gives each thread its
// own visitor, which also sees begin_tile(tile, list, length) and end_tile(tile, length).
template <typename scalar_t, typename MakeVisitor>
void for_each_lane_group(const TileGrid &grid, const int64_t *offsets, const int32_t *ids, const scalar_t *means2d,
                         const scalar_t *conics, const scalar_t *opacities, const int32_t *radii,
                         MakeVisitor make_visitor) {
#pragma omp parallel num_threads(at::get_num_threads())
    {
        auto visitor = make_visitor();
        std::vector<Splat<scalar_t>> splats;
        RowCull cull;
        std::vector<int32_t> row;
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < grid.count(); ++tile) {
            const int32_t *list = ids + offsets[tile];
            const int64_t length = offsets[tile + 1] - offsets[tile];
            if (length == 0) continue;
            gather_splats(list, length, means2d, conics, opacities, radii, splats);
            cull.gather(splats);
            visitor.begin_tile(tile, list, length);
            const int64_t x0 = (tile % grid.tiles_x) * grid.tile_size, y0 = (tile / grid.tiles_x) * grid.tile_size;
            const int64_t x_end = std::min(x0 + grid.tile_size, grid.width);
            const int64_t y_end = std::min(y0 + grid.tile_size, grid.height);
            for (int64_t y = y0; y < y_end; ++y) {
                const scalar_t py = static_cast<scalar_t>(y) + scalar_t(0.5);
                cull.candidates(py, x0 + 0.5, x_end - 0.5, row);
                for (int64_t x = x0; x < x_end; x += kLanes) {
                    const int lanes = static_cast<int>(std::min<int64_t>(kLanes, x_end - x));
                    visitor.lanes(LaneGroup<scalar_t>{y, x, lanes, static_cast<scalar_t>(x) + scalar_t(0.5), py},
                                  splats, row);
                }
            }
            visitor.end_tile(tile, length);
        }
    }
}

// The number of colour channels: kChannels where it is known when compiling (3, RGB: the loops over channels unroll
// and the pixels' sums stay in registers), else the run-time count (kChannels 0).
template <int kChannels> struct ChannelCount {
    int64_t runtime;
    static constexpr int kArray = kChannels > 0 ? kChannels : kMaxChannels;
    int64_t operator()() const { return kChannels > 0 ? kChannels : runtime; }
};

// Calls body(ChannelCount<...>{channels}) with the channel count fixed at compile time where it is 3.
template <typename Body> void with_channel_count(int64_t channels, Body body) {
    if (channels == 3)
        body(ChannelCount<3>{3});
    else
        body(ChannelCount<0>{channels});
}

// Forward: front to back over each lane group's candidates, until every lane's transmittance has stopped it.
template <typename scalar_t, typename Channels> struct ForwardVisitor {
    const scalar_t *colors;
    Channels channels;
    int64_t width;
    scalar_t *image, *alpha_out;
    int32_t *walked;
    std::vector<scalar_t> tile_colors = {};
    CandidateBlock<scalar_t> block = {};

    void begin_tile(int64_t, const int32_t *list, int64_t length) {
        tile_colors.resize(length * channels());
        for (int64_t j = 0; j < length; ++j)
            for (int64_t k = 0; k < channels(); ++k) tile_colors[j * channels() + k] = colors[list[j] * channels() + k];
    }
    void end_tile(int64_t, int64_t) {}

    void lanes(const LaneGroup<scalar_t> &g, const std::vector<Splat<scalar_t>> &splats,
               const std::vector<int32_t> &row) {
        // Colour and alpha sums in the inputs' dtype, front to back: the reference's index_add order.
        double transmittance[kLanes];
        scalar_t pixel[Channels::kArray][kLanes], accumulated[kLanes] = {};
        for (int64_t k = 0; k < channels(); ++k) std::fill(pixel[k], pixel[k] + kLanes, scalar_t(0));
        int32_t end[kLanes] = {};
        int32_t running[kLanes];  // not yet stopped by the transmittance (and inside the image)
        for (int i = 0; i < kLanes; ++i) {
            transmittance[i] = 1.0;
            running[i] = i < g.lanes;
        }
        int32_t limit[kLanes];  // a running lane asks for every entry, a stopped one for none
        size_t next = 0;
        for (;;) {
            for (int i = 0; i < kLanes; ++i) limit[i] = running[i] ? INT32_MAX : 0;
            next = next_block(splats, row, next, g.px0, g.py, limit, INT32_MAX, block);
            if (block.count == 0) break;
            for (int b = 0; b < block.count; ++b) {
                const int32_t j = block.j[b];
                const scalar_t *color = tile_colors.data() + j * channels();
                scalar_t weights[kLanes];
                blend_lanes(block.lanes[b].alpha, transmittance, accumulated, running, end, weights, j);
                for (int64_t k = 0; k < channels(); ++k)
                    for (int i = 0; i < kLanes; ++i) pixel[k][i] += weights[i] * color[k];
            }
            int still_running = 0;
            for (int i = 0; i < kLanes; ++i) still_running += running[i];
            if (still_running == 0) break;
        }
        for (int i = 0; i < g.lanes; ++i) {
            const int64_t p = g.y * width + g.x + i;
            for (int64_t k = 0; k < channels(); ++k) image[p * channels() + k] = pixel[k][i];
            alpha_out[p] = accumulated[i];
            walked[p] = end[i];
        }
    }
};

template <typename scalar_t>
void forward_impl(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &depths, const TileGrid &grid, at::Tensor &image, at::Tensor &alpha_out,
    at::Tensor &walked, at::Tensor &offsets_out, at::Tensor &ids_out
) {
    std::vector<int64_t> offsets;
    std::vector<int32_t> ids;
    tile_lists<scalar_t>(means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(), depths.data_ptr<scalar_t>(),
                         means2d.size(0), grid, offsets, ids);
    with_channel_count(colors.size(1), [&](auto channels) {
        for_each_lane_group<scalar_t>(grid, offsets.data(), ids.data(), means2d.data_ptr<scalar_t>(),
                                      conics.data_ptr<scalar_t>(), opacities.data_ptr<scalar_t>(),
                                      radii.data_ptr<int32_t>(), [&] {
            return ForwardVisitor<scalar_t, decltype(channels)>{colors.data_ptr<scalar_t>(), channels, grid.width,
                                                                image.data_ptr<scalar_t>(), alpha_out.data_ptr<scalar_t>(),
                                                                walked.data_ptr<int32_t>()};
        });
    });
    offsets_out = at::from_blob(offsets.data(), {static_cast<int64_t>(offsets.size())}, at::kLong).clone();
    ids_out = at::from_blob(ids.data(), {static_cast<int64_t>(ids.size())}, at::kInt).clone();
}

// Backward: each lane group's pairs again front to back (exact alphas and transmittances, no division; only up to
// the list prefix the forward walked), then back to front with the running sum of later weights. Each tile's
// per-Gaussian sums go to its own rows of entry_sums (one per tile-list entry).
template <typename scalar_t, typename Channels> struct BackwardVisitor {
    const scalar_t *colors, *grad_image, *grad_alpha;
    const int32_t *walked;
    const int64_t *offsets;
    Channels channels;
    int64_t width;
    scalar_t *entry_sums;
    const int32_t *list = nullptr;
    // Per tile-list entry and gradient part, per lane: summed over the tile's rows, then over the lanes once at the
    // end of the tile (a sum over the lanes for every pair was the backward's largest cost).
    std::vector<scalar_t> tile_lanes = {};  // [entry][stride][kLanes]
    CandidateBlock<scalar_t> block = {};
    // The forward's blended pairs of the current lanes, front to back: per Gaussian with at least one, its entry j
    // and per lane alpha, falloff, offsets and the transmittance before it (all zero in lanes it does not blend).
    std::vector<int32_t> record_j = {};
    std::vector<scalar_t> records = {};  // [pair][5][kLanes], room for every candidate of the row
    int64_t recorded = 0;

    int64_t stride() const { return 6 + channels(); }
    void begin_tile(int64_t, const int32_t *tile_list, int64_t length) {
        list = tile_list;
        tile_lanes.assign(length * stride() * kLanes, scalar_t(0));
    }
    void end_tile(int64_t tile, int64_t length) {
        scalar_t *entries = entry_sums + offsets[tile] * stride();
        const int64_t rows = length * stride();
        int64_t k = 0;
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<scalar_t, float>)
            for (; k + 16 <= rows; k += 16) lane_sums_16(tile_lanes.data() + k * kLanes, entries + k);
#endif
        for (; k < rows; ++k) entries[k] = static_cast<scalar_t>(lane_sum(tile_lanes.data() + k * kLanes));
    }

    void lanes(const LaneGroup<scalar_t> &g, const std::vector<Splat<scalar_t>> &splats,
               const std::vector<int32_t> &row) {
        const int64_t p0 = g.y * width + g.x;
        int32_t end[kLanes] = {}, last_end = 0;
        for (int i = 0; i < g.lanes; ++i) {
            end[i] = walked[p0 + i];
            last_end = std::max(last_end, end[i]);
        }
        if (last_end == 0) return;
        // Read before the walk: the rows of the upstream gradients are mostly not in cache yet, and their loads then
        // overlap the walk's evaluations.
        scalar_t grad_color[Channels::kArray][kLanes], grad_weight[kLanes];  // zero beyond the image
        for (int i = 0; i < kLanes; ++i) {
            const bool inside = i < g.lanes;
            for (int64_t k = 0; k < channels(); ++k)
                grad_color[k][i] = inside ? grad_image[(p0 + i) * channels() + k] : scalar_t(0);
            grad_weight[i] = inside ? grad_alpha[p0 + i] : scalar_t(0);
        }
        record_pairs(g, splats, row, end, last_end);
        // Sum over later pairs of weight * dL/dweight, back to front in the inputs' dtype (the reference subtracts
        // float64 prefix sums; a running sum needs no cancelling subtraction).
        scalar_t later[kLanes] = {};
        for (int64_t q = recorded - 1; q >= 0; --q) {
            const int32_t j = record_j[q];
            const Splat<scalar_t> &s = splats[j];
            const scalar_t *r = records.data() + q * 5 * kLanes;
            const scalar_t *alpha = r, *falloff = r + kLanes, *dx = r + 2 * kLanes, *dy = r + 3 * kLanes;
            const scalar_t *before = r + 4 * kLanes;
            const scalar_t *color = colors + static_cast<int64_t>(list[j]) * channels();
            scalar_t weight[kLanes], value[kLanes], d_alpha[kLanes], d_sigma[kLanes];
            for (int i = 0; i < kLanes; ++i) value[i] = grad_weight[i];  // dL/dweight
            for (int64_t k = 0; k < channels(); ++k)
                for (int i = 0; i < kLanes; ++i) value[i] += color[k] * grad_color[k][i];
            // Unblended lanes hold zeros: they add exact zeros below.
            for (int i = 0; i < kLanes; ++i) {
                weight[i] = alpha[i] * before[i];
                d_alpha[i] = before[i] * value[i] - later[i] / (scalar_t(1) - alpha[i]);
                later[i] += weight[i] * value[i];
                // Back through alpha = min(0.999, o exp(-sigma)) (no gradient where clamped).
                const bool clamped = !(s.opacity * falloff[i] <= scalar_t(kMaxAlpha));
                d_alpha[i] = clamped ? scalar_t(0) : d_alpha[i];
                d_sigma[i] = -(d_alpha[i] * s.opacity) * falloff[i];
            }
            scalar_t *__restrict parts = tile_lanes.data() + j * stride() * kLanes;
            for (int i = 0; i < kLanes; ++i) {
                parts[i] += d_sigma[i] * (s.a * dx[i] + s.b * dy[i]);
                parts[kLanes + i] += d_sigma[i] * (s.c * dy[i] + s.b * dx[i]);
                parts[2 * kLanes + i] += d_sigma[i] * scalar_t(0.5) * (dx[i] * dx[i]);
                parts[3 * kLanes + i] += d_sigma[i] * dx[i] * dy[i];
                parts[4 * kLanes + i] += d_sigma[i] * scalar_t(0.5) * (dy[i] * dy[i]);
                parts[5 * kLanes + i] += d_alpha[i] * falloff[i];
            }
            for (int64_t k = 0; k < channels(); ++k)
                for (int i = 0; i < kLanes; ++i) parts[(6 + k) * kLanes + i] += weight[i] * grad_color[k][i];
        }
    }

    // The forward's pairs of the lane group again, into record_j / records.
    void record_pairs(const LaneGroup<scalar_t> &g, const std::vector<Splat<scalar_t>> &splats,
                      const std::vector<int32_t> &row, const int32_t *end, int32_t last_end) {
        record_j.resize(row.size());
        if (records.size() < row.size() * 5 * kLanes) records.resize(row.size() * 5 * kLanes);
        recorded = 0;
        double transmittance[kLanes];
        for (int i = 0; i < kLanes; ++i) transmittance[i] = 1.0;
        size_t next = 0;
        for (;;) {
            next = next_block(splats, row, next, g.px0, g.py, end, last_end, block);
            if (block.count == 0) break;
            for (int b = 0; b < block.count; ++b) record_pair(block.j[b], block.lanes[b], transmittance);
        }
    }

    // One Gaussian's lanes into the records, if it blends any; advances the lanes' transmittances.
    void record_pair(int32_t j, const LaneAlphas<scalar_t> &lanes_alpha, double *transmittance) {
        int32_t any = 0;
        for (int i = 0; i < kLanes; ++i) any |= lanes_alpha.alpha[i] > scalar_t(0);
        if (!any) return;
        record_j[recorded] = j;
        scalar_t *r = records.data() + recorded * 5 * kLanes;
        ++recorded;
        for (int i = 0; i < kLanes; ++i) {
            const bool b = lanes_alpha.alpha[i] > scalar_t(0);
            r[i] = b ? lanes_alpha.alpha[i] : scalar_t(0);
            r[kLanes + i] = b ? lanes_alpha.falloff[i] : scalar_t(0);
            r[2 * kLanes + i] = b ? lanes_alpha.dx[i] : scalar_t(0);
            r[3 * kLanes + i] = b ? lanes_alpha.dy[i] : scalar_t(0);
            r[4 * kLanes + i] = b ? static_cast<scalar_t>(transmittance[i]) : scalar_t(0);
            const double after = transmittance[i] * (1.0 - static_cast<double>(r[i]));
            transmittance[i] = b ? after : transmittance[i];
        }
    }
};

template <typename scalar_t>
void backward_impl(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &offsets, const at::Tensor &ids, const at::Tensor &walked,
    const at::Tensor &grad_image, const at::Tensor &grad_alpha, const TileGrid &grid, at::Tensor &sums
) {
    const int64_t channels = colors.size(1), stride = 6 + channels;
    const int64_t *off = offsets.data_ptr<int64_t>();
    const int32_t *list_all = ids.data_ptr<int32_t>();
    // Each tile's per-Gaussian sums go to its own rows (one per tile-list entry), then are added up per Gaussian in
    // a fixed order: the gradients do not depend on the thread count or schedule.
    const int64_t n_entries = off[grid.count()];
    std::vector<scalar_t> entry_sums(n_entries * stride);
    with_channel_count(channels, [&](auto count) {
        for_each_lane_group<scalar_t>(grid, off, list_all, means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                                      opacities.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(), [&] {
            return BackwardVisitor<scalar_t, decltype(count)>{colors.data_ptr<scalar_t>(), grad_image.data_ptr<scalar_t>(),
                                                              grad_alpha.data_ptr<scalar_t>(), walked.data_ptr<int32_t>(),
                                                              off, count, grid.width, entry_sums.data()};
        });
    });
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

void check_background(const at::Tensor &background, const at::Tensor &colors) {
    TORCH_CHECK(background.device().is_cpu() && background.is_contiguous() && background.dim() == 1 &&
                    (background.numel() == 0 || background.numel() == colors.size(1)) &&
                    background.scalar_type() == colors.scalar_type(),
                "background must be empty or a contiguous [K] CPU tensor of the colours' dtype");
}

// image + (1 - alpha) background, in place, with the reference's operations (rasterize_torch).
template <typename scalar_t>
void add_background(scalar_t *image, const scalar_t *alpha, const scalar_t *background, int64_t pixels,
                    int64_t channels) {
    at::parallel_for(0, pixels, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
            const scalar_t uncovered = scalar_t(1) - alpha[p];
            for (int64_t k = 0; k < channels; ++k) image[p * channels + k] += uncovered * background[k];
        }
    });
}

// dL/dalpha of the composite with its background: grad_alpha - sum_k grad_image[k] background[k] (autograd's
// gradient of image + (1 - alpha) background).
template <typename scalar_t>
at::Tensor alpha_gradient_with_background(const at::Tensor &grad_image, const at::Tensor &grad_alpha,
                                          const at::Tensor &background) {
    at::Tensor result = at::empty_like(grad_alpha);
    const int64_t pixels = grad_alpha.numel(), channels = background.numel();
    const scalar_t *g = grad_image.data_ptr<scalar_t>(), *ga = grad_alpha.data_ptr<scalar_t>();
    const scalar_t *bg = background.data_ptr<scalar_t>();
    scalar_t *out = result.data_ptr<scalar_t>();
    at::parallel_for(0, pixels, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
            scalar_t covered = g[p * channels] * bg[0];
            for (int64_t k = 1; k < channels; ++k) covered += g[p * channels + k] * bg[k];
            out[p] = ga[p] - covered;
        }
    });
    return result;
}

}  // namespace

// Returns image [H, W, K] (over the background [K], unless that is empty), accumulated alpha [H, W] and what the
// backward needs: tile offsets [T + 1] (int64), tile lists (int32 Gaussian ids) and per pixel the length of the list
// prefix it walked (int32).
std::vector<at::Tensor> rasterize_forward(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &depths, int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor &background
) {
    check_inputs(means2d, conics, opacities, colors);
    check_background(background, colors);
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
        if (background.numel() > 0)
            add_background(image.data_ptr<scalar_t>(), alpha_out.data_ptr<scalar_t>(), background.data_ptr<scalar_t>(),
                           height * width, channels);
    });
    return {image, alpha_out, offsets_out, ids_out, walked};
}

// Gradients of the forward's image and alpha with respect to means2d [N, 2], conics [N, 3], opacities [N] and
// colors [N, K]; grad_image [H, W, K] and grad_alpha [H, W]; background as given to the forward.
std::vector<at::Tensor> rasterize_backward(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &opacities, const at::Tensor &colors,
    const at::Tensor &radii, const at::Tensor &offsets, const at::Tensor &ids, const at::Tensor &walked,
    const at::Tensor &grad_image, const at::Tensor &grad_alpha, int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor &background
) {
    check_inputs(means2d, conics, opacities, colors);
    check_background(background, colors);
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
        const at::Tensor alpha_grad = background.numel() > 0
                                          ? alpha_gradient_with_background<scalar_t>(grad_image, grad_alpha, background)
                                          : grad_alpha;
        backward_impl<scalar_t>(means2d, conics, opacities, colors, radii, offsets, ids, walked, grad_image,
                                alpha_grad, grid, sums);
    });
    at::Tensor grads = sums.to(means2d.scalar_type());
    return {grads.slice(1, 0, 2).contiguous(), grads.slice(1, 2, 5).contiguous(), grads.select(1, 5).contiguous(),
            grads.slice(1, 6, stride).contiguous()};
}

}  // namespace splat2splat

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
    module.def("forward", &splat2splat::rasterize_forward, "CPU tile compositing: image, alpha and saved tile lists",
               py::arg("means2d"), py::arg("conics"), py::arg("opacities"), py::arg("colors"), py::arg("radii"),
               py::arg("depths"), py::arg("width"), py::arg("height"), py::arg("tile_size"), py::arg("background"));
    module.def("backward", &splat2splat::rasterize_backward, "Gradients of the CPU tile compositing",
               py::arg("means2d"), py::arg("conics"), py::arg("opacities"), py::arg("colors"), py::arg("radii"),
               py::arg("offsets"), py::arg("ids"), py::arg("walked"), py::arg("grad_image"), py::arg("grad_alpha"),
               py::arg("width"), py::arg("height"), py::arg("tile_size"), py::arg("background"));
}

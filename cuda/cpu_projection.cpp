// CPU projection of 3D Gaussians and their SH colours, forward and backward (gsplat 1.5.3's fully fused projection,
// pinhole, "classic" mode, and its spherical_harmonics). Loaded by splat2splat/kernels/cpu_projection.py
// (torch.utils.cpp_extension.load) as splat2splat_cpu_projection.
//
// The forward mirrors the pure-PyTorch reference (splat2splat/gaussians/rasterize.py: project, _world_to_cam,
// _persp_proj, and gsplat's _quat_to_rotmat / _spherical_harmonics) operation by operation in the inputs' dtype, so
// that radii (a ceil of a float) come out identical:
//   covariance  R(q / |q|) diag(s) (R diag(s))^T, into each camera's frame;
//   EWA         J Sigma_c J^T with the tangent clamped 30 % beyond the image, + eps2d on the diagonal;
//   extent      ceil(min(3.33, sqrt(2 ln(255 o))) sqrt(diag)), zero where culled (det <= 0, depth outside
//               (near, far), o < 1/255, or the box entirely off-screen);
//   behind      Gaussians at or behind the near plane are projected from the stand-in point (0, 0, 1): finite
//               values, no gradient into their position;
//   colours     max(SH(degree, normalize(mean - camera centre)) + 0.5, 0).
// The backward is the analytic derivative of those formulas (what autograd computes for the reference, up to float
// rounding), recomputing the forward's intermediates. Gaussians run in parallel (at::parallel_for, torch's thread
// count); each owns its gradient rows, summed over cameras in order: deterministic for any thread count.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

namespace splat2splat {
namespace {

// Gaussians per parallel chunk: ~1 ms of work, so that small scenes (thousands) run on one thread without a parallel
// region (whose threads a loaded machine can stall) and large ones split evenly.
constexpr int64_t kGrain = 8192;

template <typename T> using Mat3 = std::array<std::array<T, 3>, 3>;

// The 3x3 product a b, summed over the middle index in order (as the reference's broadcast sum).
template <typename T> Mat3<T> mul(const Mat3<T> &a, const Mat3<T> &b) {
    Mat3<T> out;
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k) out[i][k] = a[i][0] * b[0][k] + a[i][1] * b[1][k] + a[i][2] * b[2][k];
    return out;
}

template <typename T> Mat3<T> transpose(const Mat3<T> &a) {
    Mat3<T> out;
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k) out[i][k] = a[k][i];
    return out;
}

// F.normalize(q, dim=-1): q / max(|q|, 1e-12).
template <typename T, int D> struct Normalized {
    T value[D];
    T norm, denominator;
};

template <typename T, int D> Normalized<T, D> normalize(const T *v) {
    Normalized<T, D> out;
    T squares = 0;
    for (int i = 0; i < D; ++i) squares += v[i] * v[i];
    out.norm = std::sqrt(squares);
    out.denominator = std::max(out.norm, T(1e-12));
    for (int i = 0; i < D; ++i) out.value[i] = v[i] / out.denominator;
    return out;
}

// Gradient of v / max(|v|, eps) with respect to v, given the gradient g of the result.
template <typename T, int D> void normalize_backward(const Normalized<T, D> &n, const T *v, const T *g, T *out) {
    T dot = 0;
    for (int i = 0; i < D; ++i) dot += g[i] * v[i];
    const T scale = n.norm > T(1e-12) ? dot / (n.denominator * n.denominator * n.norm) : T(0);
    for (int i = 0; i < D; ++i) out[i] = g[i] / n.denominator - scale * v[i];
}

// gsplat's _quat_to_rotmat of a normalised (w, x, y, z).
template <typename T> Mat3<T> rotmat(const T *q) {
    const T w = q[0], x = q[1], y = q[2], z = q[3];
    Mat3<T> r;
    r[0] = {T(1) - T(2) * (y * y + z * z), T(2) * (x * y - w * z), T(2) * (x * z + w * y)};
    r[1] = {T(2) * (x * y + w * z), T(1) - T(2) * (x * x + z * z), T(2) * (y * z - w * x)};
    r[2] = {T(2) * (x * z - w * y), T(2) * (y * z + w * x), T(1) - T(2) * (x * x + y * y)};
    return r;
}

template <typename T> void rotmat_backward(const T *q, const Mat3<T> &g, T *out) {
    const T w = q[0], x = q[1], y = q[2], z = q[3];
    out[0] = T(2) * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] + x * g[2][1]);
    out[1] = T(2) * (y * g[0][1] + z * g[0][2] + y * g[1][0] - T(2) * x * g[1][1] - w * g[1][2] + z * g[2][0] +
                     w * g[2][1] - T(2) * x * g[2][2]);
    out[2] = T(2) * (-T(2) * y * g[0][0] + x * g[0][1] + w * g[0][2] + x * g[1][0] + z * g[1][2] - w * g[2][0] +
                     z * g[2][1] - T(2) * y * g[2][2]);
    out[3] = T(2) * (-T(2) * z * g[0][0] - w * g[0][1] + x * g[0][2] + w * g[1][0] - T(2) * z * g[1][1] +
                     y * g[1][2] + x * g[2][0] + y * g[2][1]);
}

// One Gaussian's world covariance and what its backward needs.
template <typename T> struct Covariance {
    Normalized<T, 4> quat;
    Mat3<T> rotation, scaled, covariance;  // R, M = R diag(s), M M^T
};

template <typename T> Covariance<T> covariance(const T *quat, const T *scale) {
    Covariance<T> out;
    out.quat = normalize<T, 4>(quat);
    out.rotation = rotmat(out.quat.value);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) out.scaled[i][j] = out.rotation[i][j] * scale[j];
    out.covariance = mul(out.scaled, transpose(out.scaled));
    return out;
}

// One camera: rotation, translation and the pinhole's focal lengths, centre and tangent limits.
template <typename T> struct Camera {
    Mat3<T> rotation;
    T translation[3];
    T k[2][3];  // the first two rows of K
    T fx, fy, lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
};

template <typename T> Camera<T> camera(const T *viewmat, const T *K, int64_t width, int64_t height) {
    Camera<T> cam;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) cam.rotation[i][j] = viewmat[i * 4 + j];
        cam.translation[i] = viewmat[i * 4 + 3];
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) cam.k[i][j] = K[i * 3 + j];
    cam.fx = K[0];
    cam.fy = K[4];
    const T cx = K[2], cy = K[5];
    // As the reference's tensor arithmetic rounds: a python scalar divided by a tensor is a reciprocal times it.
    const T tan_fovx = (T(1) / cam.fx) * T(0.5 * width), tan_fovy = (T(1) / cam.fy) * T(0.5 * height);
    cam.lim_x_pos = (T(width) - cx) / cam.fx + T(0.3) * tan_fovx;
    cam.lim_x_neg = cx / cam.fx + T(0.3) * tan_fovx;
    cam.lim_y_pos = (T(height) - cy) / cam.fy + T(0.3) * tan_fovy;
    cam.lim_y_neg = cy / cam.fy + T(0.3) * tan_fovy;
    return cam;
}

// One Gaussian seen by one camera: everything the forward outputs and the backward reuses.
template <typename T> struct Projected {
    T mean_c[3];      // in the camera frame
    Mat3<T> cov_c;    // covariance in the camera frame
    bool in_front;    // depth > near: projected from its mean, else from the stand-in point
    T p[3];           // the projected point (mean_c or the stand-in)
    T u[2];           // clamped tangents tx / tz, ty / tz
    bool in_range[2]; // whether the clamp let them through
    T tc[2];          // tz * u
    T jacobian[2][3];
    T jcov[2][3];     // J Sigma_c
    T cov2d[2][2];    // J Sigma_c J^T + eps2d I
    T det, det_safe;
    T means2d[2], conic[3];
};

template <typename T>
Projected<T> project_one(const Covariance<T> &cov, const T *mean, const Camera<T> &cam, T near_plane, T eps2d) {
    Projected<T> o;
    const auto &r = cam.rotation;
    for (int i = 0; i < 3; ++i) o.mean_c[i] = r[i][0] * mean[0] + r[i][1] * mean[1] + r[i][2] * mean[2] + cam.translation[i];
    o.cov_c = mul(mul(r, cov.covariance), transpose(r));
    o.in_front = o.mean_c[2] > near_plane;
    o.p[0] = o.in_front ? o.mean_c[0] : T(0);
    o.p[1] = o.in_front ? o.mean_c[1] : T(0);
    o.p[2] = o.in_front ? o.mean_c[2] : T(1);
    const T tz = o.p[2], tz2 = tz * tz;
    const T lo[2] = {-cam.lim_x_neg, -cam.lim_y_neg}, hi[2] = {cam.lim_x_pos, cam.lim_y_pos};
    for (int i = 0; i < 2; ++i) {
        const T ratio = o.p[i] / tz;
        o.in_range[i] = ratio >= lo[i] && ratio <= hi[i];
        o.u[i] = std::min(std::max(ratio, lo[i]), hi[i]);
        o.tc[i] = tz * o.u[i];
    }
    const T f[2] = {cam.fx, cam.fy};
    for (int i = 0; i < 2; ++i) {
        o.jacobian[i][i] = f[i] / tz;
        o.jacobian[i][1 - i] = T(0);
        o.jacobian[i][2] = (-f[i] * o.tc[i]) / tz2;
    }
    for (int i = 0; i < 2; ++i)
        for (int k = 0; k < 3; ++k)
            o.jcov[i][k] = o.jacobian[i][0] * o.cov_c[0][k] + o.jacobian[i][1] * o.cov_c[1][k] +
                           o.jacobian[i][2] * o.cov_c[2][k];
    for (int i = 0; i < 2; ++i)
        for (int l = 0; l < 2; ++l)
            o.cov2d[i][l] = o.jcov[i][0] * o.jacobian[l][0] + o.jcov[i][1] * o.jacobian[l][1] +
                            o.jcov[i][2] * o.jacobian[l][2];
    o.cov2d[0][0] += eps2d;
    o.cov2d[1][1] += eps2d;
    for (int i = 0; i < 2; ++i)
        o.means2d[i] = (cam.k[i][0] * o.p[0] + cam.k[i][1] * o.p[1] + cam.k[i][2] * o.p[2]) / tz;
    o.det = o.cov2d[0][0] * o.cov2d[1][1] - o.cov2d[0][1] * o.cov2d[1][0];
    o.det_safe = std::max(o.det, T(1e-10));
    o.conic[0] = o.cov2d[1][1] / o.det_safe;
    o.conic[1] = -o.cov2d[0][1] / o.det_safe;
    o.conic[2] = o.cov2d[0][0] / o.det_safe;
    return o;
}

void check(const at::Tensor &t, const char *name, int64_t dim, int64_t last) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == dim && (last < 0 || t.size(-1) == last),
                name, " must be a contiguous CPU tensor of ", dim, " dimensions", last < 0 ? "" : " ending in ",
                last < 0 ? "" : std::to_string(last));
}

void check_gaussians(const at::Tensor &means, const at::Tensor &quats, const at::Tensor &scales,
                     const at::Tensor &viewmats, const at::Tensor &Ks) {
    check(means, "means", 2, 3);
    check(quats, "quats", 2, 4);
    check(scales, "scales", 2, 3);
    check(viewmats, "viewmats", 3, 4);
    check(Ks, "Ks", 3, 3);
    const int64_t n = means.size(0);
    TORCH_CHECK(quats.size(0) == n && scales.size(0) == n, "means, quats and scales must hold the same Gaussians");
    TORCH_CHECK(viewmats.size(0) == Ks.size(0) && viewmats.size(1) == 4 && Ks.size(1) == 3,
                "viewmats [C, 4, 4] and Ks [C, 3, 3] must hold the same cameras");
    for (const at::Tensor *t : {&quats, &scales, &viewmats, &Ks})
        TORCH_CHECK(t->scalar_type() == means.scalar_type(), "all inputs must have the means' dtype");
}

template <typename T>
std::vector<Camera<T>> cameras(const at::Tensor &viewmats, const at::Tensor &Ks, int64_t width, int64_t height) {
    std::vector<Camera<T>> out;
    for (int64_t c = 0; c < viewmats.size(0); ++c)
        out.push_back(camera<T>(viewmats.data_ptr<T>() + c * 16, Ks.data_ptr<T>() + c * 9, width, height));
    return out;
}

template <typename T>
void project_forward_impl(const at::Tensor &means, const at::Tensor &quats, const at::Tensor &scales,
                          const at::Tensor &opacities, const at::Tensor &viewmats, const at::Tensor &Ks,
                          int64_t width, int64_t height, double near_plane, double far_plane, double eps2d,
                          at::Tensor &radii, at::Tensor &means2d, at::Tensor &depths, at::Tensor &conics) {
    const int64_t n = means.size(0);
    const auto cams = cameras<T>(viewmats, Ks, width, height);
    const int64_t n_cameras = static_cast<int64_t>(cams.size());
    const T *mean = means.data_ptr<T>(), *quat = quats.data_ptr<T>(), *scale = scales.data_ptr<T>();
    const T *opacity = opacities.data_ptr<T>();
    int32_t *radius_out = radii.data_ptr<int32_t>();
    T *means2d_out = means2d.data_ptr<T>(), *depth_out = depths.data_ptr<T>(), *conic_out = conics.data_ptr<T>();
    const T threshold = T(1.0 / 255.0), near = T(near_plane), far = T(far_plane), eps = T(eps2d);
    const T w = T(width), h = T(height);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g) {
            const Covariance<T> cov = covariance(quat + 4 * g, scale + 3 * g);
            // Opacity-aware extent: beyond it alpha < 1/255.
            const T extend = std::min(std::sqrt(T(2.0) * std::log(std::max(opacity[g], threshold) / threshold)),
                                      T(3.33));
            for (int64_t c = 0; c < n_cameras; ++c) {
                const Projected<T> o = project_one(cov, mean + 3 * g, cams[c], near, eps);
                const int64_t k = c * n + g;
                const T depth = o.mean_c[2];
                const T rx = std::ceil(extend * std::sqrt(o.cov2d[0][0]));
                const T ry = std::ceil(extend * std::sqrt(o.cov2d[1][1]));
                const bool valid = o.det > T(0) && depth > near && depth < far && opacity[g] >= threshold;
                const T mx = o.means2d[0], my = o.means2d[1];
                const bool inside = (mx + rx > T(0)) && (mx - rx < w) && (my + ry > T(0)) && (my - ry < h);
                radius_out[2 * k] = valid && inside ? static_cast<int32_t>(rx) : 0;
                radius_out[2 * k + 1] = valid && inside ? static_cast<int32_t>(ry) : 0;
                means2d_out[2 * k] = mx;
                means2d_out[2 * k + 1] = my;
                depth_out[k] = depth;
                for (int i = 0; i < 3; ++i) conic_out[3 * k + i] = o.conic[i];
            }
        }
    });
}

template <typename T>
void project_backward_impl(const at::Tensor &means, const at::Tensor &quats, const at::Tensor &scales,
                           const at::Tensor &viewmats, const at::Tensor &Ks, int64_t width, int64_t height,
                           double near_plane, double eps2d, const at::Tensor &grad_means2d,
                           const at::Tensor &grad_depths, const at::Tensor &grad_conics, at::Tensor &grad_means,
                           at::Tensor &grad_quats, at::Tensor &grad_scales) {
    const int64_t n = means.size(0);
    const auto cams = cameras<T>(viewmats, Ks, width, height);
    const int64_t n_cameras = static_cast<int64_t>(cams.size());
    const T *mean = means.data_ptr<T>(), *quat = quats.data_ptr<T>(), *scale = scales.data_ptr<T>();
    const T *g_means2d = grad_means2d.data_ptr<T>(), *g_depths = grad_depths.data_ptr<T>();
    const T *g_conics = grad_conics.data_ptr<T>();
    T *out_means = grad_means.data_ptr<T>(), *out_quats = grad_quats.data_ptr<T>();
    T *out_scales = grad_scales.data_ptr<T>();
    const T near = T(near_plane), eps = T(eps2d);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g) {
            const Covariance<T> cov = covariance(quat + 4 * g, scale + 3 * g);
            T g_mean[3] = {0, 0, 0};
            Mat3<T> g_cov{};  // d loss / d Sigma (world)
            for (int64_t c = 0; c < n_cameras; ++c) {
                const int64_t k = c * n + g;
                const T *gm2 = g_means2d + 2 * k, *gc = g_conics + 3 * k;
                const T gd = g_depths[k];
                if (gm2[0] == T(0) && gm2[1] == T(0) && gc[0] == T(0) && gc[1] == T(0) && gc[2] == T(0) && gd == T(0))
                    continue;  // nothing flows back (culled, or not blended)
                const Camera<T> &cam = cams[c];
                const Projected<T> o = project_one(cov, mean + 3 * g, cam, near, eps);
                // Conic = [c11, -c01, c00] / max(det, 1e-10).
                const T ds = o.det_safe;
                const T g_det = o.det >= T(1e-10)
                                    ? -(gc[0] * o.conic[0] + gc[1] * o.conic[1] + gc[2] * o.conic[2]) / ds
                                    : T(0);
                T g2[2][2];
                g2[0][0] = gc[2] / ds + g_det * o.cov2d[1][1];
                g2[1][1] = gc[0] / ds + g_det * o.cov2d[0][0];
                g2[0][1] = -gc[1] / ds - g_det * o.cov2d[1][0];
                g2[1][0] = -g_det * o.cov2d[0][1];
                // cov2d = (J Sigma_c) J^T.
                T g_jcov[2][3], g_jac[2][3];
                for (int i = 0; i < 2; ++i)
                    for (int kk = 0; kk < 3; ++kk) {
                        g_jcov[i][kk] = g2[i][0] * o.jacobian[0][kk] + g2[i][1] * o.jacobian[1][kk];
                        g_jac[i][kk] = g2[0][i] * o.jcov[0][kk] + g2[1][i] * o.jcov[1][kk];
                    }
                Mat3<T> g_cov_c;
                for (int j = 0; j < 3; ++j)
                    for (int kk = 0; kk < 3; ++kk)
                        g_cov_c[j][kk] = o.jacobian[0][j] * g_jcov[0][kk] + o.jacobian[1][j] * g_jcov[1][kk];
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 3; ++j)
                        g_jac[i][j] += g_jcov[i][0] * o.cov_c[j][0] + g_jcov[i][1] * o.cov_c[j][1] +
                                       g_jcov[i][2] * o.cov_c[j][2];
                // J = [[fx / tz, 0, -fx tcx / tz^2], [0, fy / tz, -fy tcy / tz^2]].
                const T tz = o.p[2], tz2 = tz * tz, tz3 = tz2 * tz;
                const T f[2] = {cam.fx, cam.fy};
                T g_p[3] = {0, 0, 0};
                for (int i = 0; i < 2; ++i) {
                    g_p[2] += -g_jac[i][i] * f[i] / tz2 + g_jac[i][2] * T(2) * f[i] * o.tc[i] / tz3;
                    const T g_tc = -g_jac[i][2] * f[i] / tz2;
                    // tc = tz * clamp(t / tz): through t where the clamp passes, else through tz only.
                    if (o.in_range[i]) g_p[i] += g_tc;
                    else g_p[2] += g_tc * o.u[i];
                }
                // means2d = K[:2] p / tz.
                for (int i = 0; i < 2; ++i) {
                    for (int j = 0; j < 3; ++j) g_p[j] += gm2[i] * cam.k[i][j] / tz;
                    g_p[2] -= gm2[i] * o.means2d[i] / tz;
                }
                T g_mean_c[3] = {0, 0, gd};
                if (o.in_front)
                    for (int j = 0; j < 3; ++j) g_mean_c[j] += g_p[j];
                const auto &r = cam.rotation;
                for (int j = 0; j < 3; ++j)
                    g_mean[j] += r[0][j] * g_mean_c[0] + r[1][j] * g_mean_c[1] + r[2][j] * g_mean_c[2];
                // Sigma_c = R Sigma R^T: d Sigma = R^T dSigma_c R.
                const Mat3<T> g_world = mul(mul(transpose(r), g_cov_c), r);
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) g_cov[i][j] += g_world[i][j];
            }
            // Sigma = M M^T, M = R diag(s), R = rotmat(q / |q|).
            Mat3<T> g_scaled;
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) {
                    T sum = 0;
                    for (int kk = 0; kk < 3; ++kk) sum += (g_cov[i][kk] + g_cov[kk][i]) * cov.scaled[kk][j];
                    g_scaled[i][j] = sum;
                }
            Mat3<T> g_rotation;
            const T *s = scale + 3 * g;
            for (int j = 0; j < 3; ++j) {
                T sum = 0;
                for (int i = 0; i < 3; ++i) {
                    g_rotation[i][j] = g_scaled[i][j] * s[j];
                    sum += g_scaled[i][j] * cov.rotation[i][j];
                }
                out_scales[3 * g + j] = sum;
            }
            T g_unit[4];
            rotmat_backward(cov.quat.value, g_rotation, g_unit);
            normalize_backward<T, 4>(cov.quat, quat + 4 * g, g_unit, out_quats + 4 * g);
            for (int j = 0; j < 3; ++j) out_means[3 * g + j] = g_mean[j];
        }
    });
}

// gsplat's SH bases (Sloan's evaluation, degrees 0-3) at a unit direction, and their derivatives.
template <typename T> int sh_bases(int degree, const T *d, T *b) {
    b[0] = T(0.2820947917738781);
    if (degree < 1) return 1;
    const T x = d[0], y = d[1], z = d[2];
    const T a1 = T(-0.48860251190292);
    b[2] = -a1 * z;
    b[3] = a1 * x;
    b[1] = a1 * y;
    if (degree < 2) return 4;
    const T z2 = z * z;
    const T b2 = T(-1.092548430592079) * z, a2 = T(0.5462742152960395);
    const T c1 = x * x - y * y, s1 = T(2) * x * y;
    b[6] = T(0.9461746957575601) * z2 - T(0.3153915652525201);
    b[7] = b2 * x;
    b[5] = b2 * y;
    b[8] = a2 * c1;
    b[4] = a2 * s1;
    if (degree < 3) return 9;
    const T c3 = T(-2.285228997322329) * z2 + T(0.4570457994644658);
    const T b3 = T(1.445305721320277) * z, a3 = T(-0.5900435899266435);
    const T c2 = x * c1 - y * s1, s2 = x * s1 + y * c1;
    b[12] = z * (T(1.865881662950577) * z2 - T(1.119528997770346));
    b[13] = c3 * x;
    b[11] = c3 * y;
    b[14] = b3 * c1;
    b[10] = b3 * s1;
    b[15] = a3 * c2;
    b[9] = a3 * s2;
    return 16;
}

// d loss / d direction from d loss / d bases g (the bases' partial derivatives in x, y, z).
template <typename T> void sh_bases_backward(int degree, const T *d, const T *g, T *out) {
    out[0] = out[1] = out[2] = T(0);
    if (degree < 1) return;
    const T x = d[0], y = d[1], z = d[2];
    const T a1 = T(-0.48860251190292);
    out[0] += a1 * g[3];
    out[1] += a1 * g[1];
    out[2] += -a1 * g[2];
    if (degree < 2) return;
    const T k2 = T(-1.092548430592079), a2 = T(0.5462742152960395);
    out[2] += T(2) * T(0.9461746957575601) * z * g[6] + k2 * (x * g[7] + y * g[5]);
    out[0] += k2 * z * g[7] + a2 * T(2) * (x * g[8] + y * g[4]);
    out[1] += k2 * z * g[5] + a2 * T(2) * (x * g[4] - y * g[8]);
    if (degree < 3) return;
    const T z2 = z * z, c1 = x * x - y * y, s1 = T(2) * x * y;
    const T c3 = T(-2.285228997322329) * z2 + T(0.4570457994644658);
    const T k3 = T(1.445305721320277), a3 = T(-0.5900435899266435);
    const T b3 = k3 * z;
    out[2] += (T(3) * T(1.865881662950577) * z2 - T(1.119528997770346)) * g[12] +
              T(-2.285228997322329) * T(2) * z * (x * g[13] + y * g[11]) + k3 * (c1 * g[14] + s1 * g[10]);
    out[0] += c3 * g[13] + b3 * T(2) * (x * g[14] + y * g[10]) + a3 * T(3) * (c1 * g[15] + s1 * g[9]);
    out[1] += c3 * g[11] + b3 * T(2) * (x * g[10] - y * g[14]) + a3 * T(3) * (c1 * g[9] - s1 * g[15]);
}

template <typename T>
void sh_forward_impl(int64_t degree, const at::Tensor &means, const at::Tensor &campos, const at::Tensor &sh,
                     at::Tensor &colors) {
    const int64_t n = means.size(0), n_cameras = campos.size(0), coefficients = sh.size(1);
    const T *mean = means.data_ptr<T>(), *centre = campos.data_ptr<T>(), *coeff = sh.data_ptr<T>();
    T *out = colors.data_ptr<T>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        T bases[16];
        for (int64_t g = begin; g < end; ++g) {
            const T *cg = coeff + g * coefficients * 3;
            for (int64_t c = 0; c < n_cameras; ++c) {
                T dir[3];
                for (int j = 0; j < 3; ++j) dir[j] = mean[3 * g + j] - centre[3 * c + j];
                const auto unit = normalize<T, 3>(dir);
                const int count = sh_bases(static_cast<int>(degree), unit.value, bases);
                T *o = out + 3 * (c * n + g);
                for (int k = 0; k < 3; ++k) {
                    T sum = 0;
                    for (int b = 0; b < count; ++b) sum += bases[b] * cg[3 * b + k];
                    o[k] = std::max(sum + T(0.5), T(0));
                }
            }
        }
    });
}

template <typename T>
void sh_backward_impl(int64_t degree, const at::Tensor &means, const at::Tensor &campos, const at::Tensor &sh,
                      const at::Tensor &grad_colors, at::Tensor &grad_means, at::Tensor &grad_sh) {
    const int64_t n = means.size(0), n_cameras = campos.size(0), coefficients = sh.size(1);
    const T *mean = means.data_ptr<T>(), *centre = campos.data_ptr<T>(), *coeff = sh.data_ptr<T>();
    const T *g_colors = grad_colors.data_ptr<T>();
    T *out_means = grad_means.data_ptr<T>(), *out_sh = grad_sh.data_ptr<T>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        T bases[16], g_bases[16];
        for (int64_t g = begin; g < end; ++g) {
            const T *cg = coeff + g * coefficients * 3;
            T *sg = out_sh + g * coefficients * 3;
            T g_mean[3] = {0, 0, 0};
            for (int64_t c = 0; c < n_cameras; ++c) {
                const T *gc = g_colors + 3 * (c * n + g);
                if (gc[0] == T(0) && gc[1] == T(0) && gc[2] == T(0)) continue;
                T dir[3];
                for (int j = 0; j < 3; ++j) dir[j] = mean[3 * g + j] - centre[3 * c + j];
                const auto unit = normalize<T, 3>(dir);
                const int count = sh_bases(static_cast<int>(degree), unit.value, bases);
                T g_sum[3];
                for (int k = 0; k < 3; ++k) {
                    T sum = 0;
                    for (int b = 0; b < count; ++b) sum += bases[b] * cg[3 * b + k];
                    g_sum[k] = sum + T(0.5) >= T(0) ? gc[k] : T(0);  // clamp_min(., 0) passes at >= 0
                }
                for (int b = 0; b < count; ++b) {
                    g_bases[b] = g_sum[0] * cg[3 * b] + g_sum[1] * cg[3 * b + 1] + g_sum[2] * cg[3 * b + 2];
                    for (int k = 0; k < 3; ++k) sg[3 * b + k] += bases[b] * g_sum[k];
                }
                if (count == 1) continue;  // degree 0 does not depend on the direction
                T g_unit[3], g_dir[3];
                sh_bases_backward(static_cast<int>(degree), unit.value, g_bases, g_unit);
                normalize_backward<T, 3>(unit, dir, g_unit, g_dir);
                for (int j = 0; j < 3; ++j) g_mean[j] += g_dir[j];
            }
            for (int j = 0; j < 3; ++j) out_means[3 * g + j] = g_mean[j];
        }
    });
}

void check_sh(int64_t degree, const at::Tensor &means, const at::Tensor &campos, const at::Tensor &sh) {
    check(means, "means", 2, 3);
    check(campos, "campos", 2, 3);
    check(sh, "sh", 3, 3);
    TORCH_CHECK(degree >= 0 && degree <= 3, "SH degree must be 0 to 3, got ", degree);
    TORCH_CHECK(sh.size(0) == means.size(0) && sh.size(1) >= (degree + 1) * (degree + 1),
                "sh must be [N, K, 3] with K >= (degree + 1)^2");
    TORCH_CHECK(campos.scalar_type() == means.scalar_type() && sh.scalar_type() == means.scalar_type(),
                "all inputs must have the means' dtype");
}

}  // namespace

// radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3] of N Gaussians in C pinhole cameras.
std::vector<at::Tensor> project_forward(const at::Tensor &means, const at::Tensor &quats, const at::Tensor &scales,
                                        const at::Tensor &opacities, const at::Tensor &viewmats, const at::Tensor &Ks,
                                        int64_t width, int64_t height, double near_plane, double far_plane,
                                        double eps2d) {
    check_gaussians(means, quats, scales, viewmats, Ks);
    check(opacities, "opacities", 1, -1);
    TORCH_CHECK(opacities.size(0) == means.size(0) && opacities.scalar_type() == means.scalar_type(),
                "opacities must be [N] of the means' dtype");
    const int64_t n = means.size(0), c = viewmats.size(0);
    at::Tensor radii = at::empty({c, n, 2}, means.options().dtype(at::kInt));
    at::Tensor means2d = at::empty({c, n, 2}, means.options());
    at::Tensor depths = at::empty({c, n}, means.options());
    at::Tensor conics = at::empty({c, n, 3}, means.options());
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
        project_forward_impl<scalar_t>(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane,
                                       far_plane, eps2d, radii, means2d, depths, conics);
    });
    return {radii, means2d, depths, conics};
}

// Gradients with respect to means [N, 3], quats [N, 4] and scales [N, 3] from those of means2d, depths, conics.
std::vector<at::Tensor> project_backward(const at::Tensor &means, const at::Tensor &quats, const at::Tensor &scales,
                                         const at::Tensor &viewmats, const at::Tensor &Ks, int64_t width,
                                         int64_t height, double near_plane, double eps2d,
                                         const at::Tensor &grad_means2d, const at::Tensor &grad_depths,
                                         const at::Tensor &grad_conics) {
    check_gaussians(means, quats, scales, viewmats, Ks);
    const int64_t n = means.size(0), c = viewmats.size(0);
    TORCH_CHECK(grad_means2d.is_contiguous() && grad_means2d.sizes() == at::IntArrayRef({c, n, 2}) &&
                    grad_depths.is_contiguous() && grad_depths.sizes() == at::IntArrayRef({c, n}) &&
                    grad_conics.is_contiguous() && grad_conics.sizes() == at::IntArrayRef({c, n, 3}),
                "gradients must be contiguous [C, N, 2], [C, N] and [C, N, 3]");
    at::Tensor grad_means = at::empty_like(means), grad_quats = at::empty_like(quats);
    at::Tensor grad_scales = at::empty_like(scales);
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
        project_backward_impl<scalar_t>(means, quats, scales, viewmats, Ks, width, height, near_plane, eps2d,
                                        grad_means2d, grad_depths, grad_conics, grad_means, grad_quats, grad_scales);
    });
    return {grad_means, grad_quats, grad_scales};
}

// Colours [C, N, 3] of N Gaussians seen from C camera centres campos [C, 3].
at::Tensor sh_forward(int64_t degree, const at::Tensor &means, const at::Tensor &campos, const at::Tensor &sh) {
    check_sh(degree, means, campos, sh);
    at::Tensor colors = at::empty({campos.size(0), means.size(0), 3}, means.options());
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "sh_forward", [&] {
        sh_forward_impl<scalar_t>(degree, means, campos, sh, colors);
    });
    return colors;
}

// Gradients with respect to means [N, 3] and sh [N, K, 3] (zero beyond the degree's coefficients).
std::vector<at::Tensor> sh_backward(int64_t degree, const at::Tensor &means, const at::Tensor &campos,
                                    const at::Tensor &sh, const at::Tensor &grad_colors) {
    check_sh(degree, means, campos, sh);
    TORCH_CHECK(grad_colors.is_contiguous() && grad_colors.sizes() == at::IntArrayRef({campos.size(0), means.size(0), 3}),
                "grad_colors must be a contiguous [C, N, 3] tensor");
    at::Tensor grad_means = at::empty_like(means), grad_sh = at::zeros_like(sh);
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "sh_backward", [&] {
        sh_backward_impl<scalar_t>(degree, means, campos, sh, grad_colors, grad_means, grad_sh);
    });
    return {grad_means, grad_sh};
}

}  // namespace splat2splat

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
    module.def("project_forward", &splat2splat::project_forward, "EWA projection: radii, means2d, depths, conics");
    module.def("project_backward", &splat2splat::project_backward, "Gradients of the EWA projection");
    module.def("sh_forward", &splat2splat::sh_forward, "SH colours, clamped at 0 after +0.5");
    module.def("sh_backward", &splat2splat::sh_backward, "Gradients of the SH colours");
}

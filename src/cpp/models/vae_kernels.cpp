// vae_kernels.cpp: the VAE's fused CPU kernels (ggml custom ops).  Each splits the T axis
// (ggml ne[1]) across the threads.
#include "models/vae_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "core/types.h"

namespace ace {

// A portable build compiles each kernel once per x86-64 level and the dynamic loader runs the
// clone this CPU supports (GCC/Clang function multiversioning); a native build has -march=native.
#if defined(ACESTEP_KERNEL_CLONES)
#define ACE_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ACE_KERNEL
#endif

static void thread_rows(int64_t n, int ith, int nth, int64_t &r0, int64_t &r1) {
    int64_t per = (n + nth - 1) / nth;
    r0 = std::min(n, per * ith);
    r1 = std::min(n, r0 + per);
}

// sin^2 has period pi, so reduce to r in [-pi/2, pi/2] (three-part Cody-Waite pi)
// and square an odd Taylor polynomial of degree 11 (error < 6e-8 there).  Rounding
// by adding and subtracting 1.5 * 2^23 keeps the loop branch- and call-free, so the
// compiler vectorises it; it is exact for |a| < 2^22, far beyond any activation.
static inline float sin_sq(float a) {
    const float shifter = 12582912.0f;
    const float n = (a * 0.318309886183790671f + shifter) - shifter;
    float r = a - n * 3.140625f;
    r -= n * 9.67502593994140625e-4f;
    r -= n * 1.509957990978376432e-7f;
    const float r2 = r * r;
    const float p = -1.0f / 6 + r2 * (1.0f / 120 + r2 * (-1.0f / 5040 + r2 * (1.0f / 362880 + r2 * (-1.0f / 39916800))));
    const float s = r + r * r2 * p;
    return s * s;
}

static void store_row(ggml_type type, const float *src, void *dst, int64_t n) {
    if (type == GGML_TYPE_F32) std::memcpy(dst, src, n * sizeof(float));
    else fp32_to_fp16_row(src, (ggml_fp16_t *)dst, n);
}

// dst[c, t] = y + inv_beta[c] * sin^2(alpha[c] * y), y = x[c, t] (+ bias[c]).
// Args: x (F32), alpha, inv_beta, optional bias.  dst is F32 or F16.
ACE_KERNEL void snake_kernel(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *x = dst->src[0];
    const float *alpha = (const float *)dst->src[1]->data;
    const float *inv_beta = (const float *)dst->src[2]->data;
    const float *bias = dst->src[3] ? (const float *)dst->src[3]->data : nullptr;
    const int64_t C = x->ne[0], T = x->ne[1] * x->ne[2];
    int64_t t0, t1;
    thread_rows(T, ith, nth, t0, t1);
    std::vector<float> row(C);
    for (int64_t t = t0; t < t1; t++) {
        const float *xr = (const float *)((const char *)x->data + t * x->nb[1]);
        float *o = row.data();
        if (bias) {
            for (int64_t c = 0; c < C; c++) {
                const float y = xr[c] + bias[c];
                o[c] = y + inv_beta[c] * sin_sq(alpha[c] * y);
            }
        } else {
            for (int64_t c = 0; c < C; c++) o[c] = xr[c] + inv_beta[c] * sin_sq(alpha[c] * xr[c]);
        }
        store_row(dst->type, o, (char *)dst->data + t * dst->nb[1], C);
    }
}

// dst[k*C + c, t] = x[c, t*stride + k*dilation - padding], zero outside x.
// x is F32 or F16, dst F32 or F16.
ACE_KERNEL void im2col_kernel(ggml_tensor *dst, int ith, int nth, void *ud) {
    const ConvGeom &g = *(const ConvGeom *)ud;
    const ggml_tensor *x = dst->src[0];
    const int64_t C = x->ne[0], T_in = x->ne[1], T_out = dst->ne[1];
    const size_t out_elt = ggml_type_size(dst->type), in_elt = ggml_type_size(x->type);
    int64_t t0, t1;
    thread_rows(T_out, ith, nth, t0, t1);
    std::vector<float> tmp(x->type == dst->type ? 0 : C);
    for (int64_t t = t0; t < t1; t++) {
        char *out = (char *)dst->data + t * dst->nb[1];
        for (int k = 0; k < g.kernel; k++, out += C * out_elt) {
            const int64_t j = t * g.stride + (int64_t)k * g.dilation - g.padding;
            if (j < 0 || j >= T_in) {
                std::memset(out, 0, C * out_elt);
                continue;
            }
            const char *in = (const char *)x->data + j * x->nb[1];
            if (x->type == dst->type) {
                std::memcpy(out, in, C * in_elt);
            } else if (x->type == GGML_TYPE_F32) {
                fp32_to_fp16_row((const float *)in, (ggml_fp16_t *)out, C);
            } else {
                fp16_to_fp32_row((const ggml_fp16_t *)in, tmp.data(), C);
                std::memcpy(out, tmp.data(), C * sizeof(float));
            }
        }
    }
}

// Transposed convolution's overlap-add: cols [K*C, T_in] (k-major, as the matmul
// against the flattened kernel leaves them) to dst [C, T_out] plus bias, where
// output u takes column (t, k) whenever t*stride + k - padding == u.
ACE_KERNEL void col2im_kernel(ggml_tensor *dst, int ith, int nth, void *ud) {
    const ConvGeom &g = *(const ConvGeom *)ud;
    const ggml_tensor *cols = dst->src[0];
    const float *bias = (const float *)dst->src[1]->data;
    const int64_t C = dst->ne[0], T_out = dst->ne[1], T_in = cols->ne[1];
    int64_t u0, u1;
    thread_rows(T_out, ith, nth, u0, u1);
    for (int64_t u = u0; u < u1; u++) {
        float *o = (float *)((char *)dst->data + u * dst->nb[1]);
        std::memcpy(o, bias, C * sizeof(float));
        const int64_t v = u + g.padding;
        for (int64_t k = v % g.stride; k < g.kernel; k += g.stride) {
            const int64_t t = (v - k) / g.stride;
            if (t < 0 || t >= T_in) continue;
            const float *col = (const float *)((const char *)cols->data + t * cols->nb[1]) + k * C;
            for (int64_t c = 0; c < C; c++) o[c] += col[c];
        }
    }
}

// dst = a + bias + skip: a residual unit's last convolution closing the unit.
ACE_KERNEL void residual_kernel(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *a = dst->src[0], *skip = dst->src[2];
    const float *bias = (const float *)dst->src[1]->data;
    const int64_t C = dst->ne[0], T = dst->ne[1];
    int64_t t0, t1;
    thread_rows(T, ith, nth, t0, t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *ar = (const float *)((const char *)a->data + t * a->nb[1]);
        const float *sr = (const float *)((const char *)skip->data + t * skip->nb[1]);
        float *o = (float *)((char *)dst->data + t * dst->nb[1]);
        for (int64_t c = 0; c < C; c++) o[c] = ar[c] + bias[c] + sr[c];
    }
}

// Winograd F(m, 7) for the residual units' 7-tap convolutions, which hold three
// quarters of the decoder's FLOPs.  Per tile of m outputs (spaced by the dilation)
// it takes n = m + 6 inputs, maps them through B^T, multiplies each of the n
// transformed rows by its own C_out x C_in matrix U_a = (G w)_a (one batched matmul),
// and maps the n products back through A^T: n matmul rows per m outputs instead of
// 7 per output.  The matrices come from evaluating polynomials at n - 1 points and
// infinity (Toom-Cook); for correlation y = A^T [(G g) . (B^T d)] with A^T = E_m^T,
// G = E_7, B^T = E_n^{-T}, E_k the n x k evaluation matrix.
// F(4, 7), always in F32: F16 storage of the transformed rows would cost 5e-3 per
// layer, and on this CPU the F32 matmuls over the compact transformed data are no
// slower than F16 ones over im2col's seven-fold copy (measured: decoder CPU time
// 1.5x lower than F16 im2col, 1.8x lower than F32 im2col).  F(6, 7) measured no
// faster (its transforms grow) and is less accurate.
constexpr int WINO_M = 4;

const Winograd &winograd() {
    // Points with small powers keep the transforms well conditioned: measured on
    // random data, F(4, 7) on these adds 1e-6 relative error in F32 (with 3 / -3
    // instead of 1.5 / -1.5 it is 1.3e-6, with 1/4 / -1/4 1.6e-6).
    static const std::vector<double> points = {0, 1, -1, 2, -2, 0.5, -0.5, 1.5, -1.5};
    static Winograd table;
    static std::once_flag once;
    std::call_once(once, [] {
        const int m = WINO_M, r = 7, n = m + r - 1;
        auto E = [&](int k) {  // n x k
            std::vector<double> e((size_t)n * k, 0.0);
            for (int i = 0; i < n - 1; i++)
                for (int j = 0; j < k; j++) e[(size_t)i * k + j] = std::pow(points[i], j);
            e[(size_t)(n - 1) * k + k - 1] = 1.0;
            return e;
        };
        // B^T = E_n^{-T}: invert by Gauss-Jordan with partial pivoting.
        std::vector<double> a = E(n), inv((size_t)n * n, 0.0);
        for (int i = 0; i < n; i++) inv[(size_t)i * n + i] = 1.0;
        for (int c = 0; c < n; c++) {
            int piv = c;
            for (int i = c + 1; i < n; i++)
                if (std::fabs(a[(size_t)i * n + c]) > std::fabs(a[(size_t)piv * n + c])) piv = i;
            for (int j = 0; j < n; j++) {
                std::swap(a[(size_t)c * n + j], a[(size_t)piv * n + j]);
                std::swap(inv[(size_t)c * n + j], inv[(size_t)piv * n + j]);
            }
            const double d = a[(size_t)c * n + c];
            for (int j = 0; j < n; j++) a[(size_t)c * n + j] /= d, inv[(size_t)c * n + j] /= d;
            for (int i = 0; i < n; i++) {
                if (i == c) continue;
                const double f = a[(size_t)i * n + c];
                for (int j = 0; j < n; j++) a[(size_t)i * n + j] -= f * a[(size_t)c * n + j], inv[(size_t)i * n + j] -= f * inv[(size_t)c * n + j];
            }
        }
        Winograd &w = table;
        w.m = m, w.n = n;
        const std::vector<double> Em = E(m), Er = E(r);
        w.AT.resize((size_t)m * n);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) w.AT[(size_t)i * n + j] = (float)Em[(size_t)j * m + i];
        w.G.assign(Er.begin(), Er.end());
        w.BT.resize((size_t)n * n);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) w.BT[(size_t)i * n + j] = (float)inv[(size_t)j * n + i];
    });
    return table;
}

// Tile j = q*d + phase covers outputs base + i*d, i < m, base = q*m*d + phase.
static inline int64_t tile_base(int64_t j, int m, int d) { return (j / d) * m * d + j % d; }

// x [C, T] (F32 or F16) -> dst [C, n_tiles, n]: dst[a, j] = sum_l BT[a, l] x[base_j + (l - 3) d].
ACE_KERNEL void wino_in_kernel(ggml_tensor *dst, int ith, int nth, void *ud) {
    const WinoGeom &g = *(const WinoGeom *)ud;
    const Winograd &w = *g.w;
    const ggml_tensor *x = dst->src[0];
    const int64_t C = x->ne[0], T = x->ne[1], NT = dst->ne[1];
    int64_t j0, j1;
    thread_rows(NT, ith, nth, j0, j1);
    std::vector<float> rows((size_t)w.n * C), acc(C);
    std::vector<char> present(w.n);
    for (int64_t j = j0; j < j1; j++) {
        const int64_t base = tile_base(j, w.m, g.dilation);
        for (int l = 0; l < w.n; l++) {
            const int64_t t = base + (int64_t)(l - 3) * g.dilation;
            present[l] = t >= 0 && t < T;
            if (!present[l]) continue;
            const char *src = (const char *)x->data + t * x->nb[1];
            if (x->type == GGML_TYPE_F32) std::memcpy(&rows[(size_t)l * C], src, C * sizeof(float));
            else fp16_to_fp32_row((const ggml_fp16_t *)src, &rows[(size_t)l * C], C);
        }
        for (int a = 0; a < w.n; a++) {
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int l = 0; l < w.n; l++) {
                const float b = w.BT[(size_t)a * w.n + l];
                if (b == 0.0f || !present[l]) continue;
                const float *r = &rows[(size_t)l * C];
                for (int64_t c = 0; c < C; c++) acc[c] += b * r[c];
            }
            store_row(dst->type, acc.data(), (char *)dst->data + a * dst->nb[2] + j * dst->nb[1], C);
        }
    }
}

// M [C, n_tiles, n] F32 -> dst [C, T]: y = sum_a AT[i, a] M[a, j] + bias, then the
// snake that feeds the next convolution (args: M, bias, alpha, inv_beta).
ACE_KERNEL void wino_out_snake_kernel(ggml_tensor *dst, int ith, int nth, void *ud) {
    const WinoGeom &g = *(const WinoGeom *)ud;
    const Winograd &w = *g.w;
    const ggml_tensor *M = dst->src[0];
    const float *bias = (const float *)dst->src[1]->data;
    const float *alpha = (const float *)dst->src[2]->data;
    const float *inv_beta = (const float *)dst->src[3]->data;
    const int64_t C = dst->ne[0], T = dst->ne[1], NT = M->ne[1];
    int64_t j0, j1;
    thread_rows(NT, ith, nth, j0, j1);
    std::vector<float> y(C);
    for (int64_t j = j0; j < j1; j++) {
        const int64_t base = tile_base(j, w.m, g.dilation);
        for (int i = 0; i < w.m; i++) {
            const int64_t t = base + (int64_t)i * g.dilation;
            if (t >= T) break;
            std::memcpy(y.data(), bias, C * sizeof(float));
            for (int a = 0; a < w.n; a++) {
                const float k = w.AT[(size_t)i * w.n + a];
                if (k == 0.0f) continue;
                const float *mr = (const float *)((const char *)M->data + a * M->nb[2] + j * M->nb[1]);
                for (int64_t c = 0; c < C; c++) y[c] += k * mr[c];
            }
            for (int64_t c = 0; c < C; c++) y[c] += inv_beta[c] * sin_sq(alpha[c] * y[c]);
            store_row(dst->type, y.data(), (char *)dst->data + t * dst->nb[1], C);
        }
    }
}

}  // namespace ace

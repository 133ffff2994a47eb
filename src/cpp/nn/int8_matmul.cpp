// int8_matmul.cpp: the packed int8 weights and the two ggml custom ops that use them (quantize the
// activations' rows; multiply).  Layouts:
//
//   packed weight, one row of the ggml tensor (I8) per group of 64 output channels:
//     Kp/4 quads × 4 blocks × [16 channels × 4 bytes]  (int8: channel c of block j holds inputs
//     4q..4q+3 at byte 64·(4q + j) + 4c), then 64 int32 (128 · Σ_k q_w, the offset's share) and
//     64 float scales.  Kp is the input width rounded up to 64; padding is zero.
//   quantized activations, one row (I8) per input row: Kp bytes q_x + 128 (padding 128, i.e. 0),
//     then the row's float scale, padded to 64 bytes.
//
// The multiply computes a tile of 6 rows × 64 channels in 24 zmm accumulators: per quad of inputs
// it loads the 4 weight blocks once and broadcasts each row's 4 bytes (one int32) to all lanes.
#include "nn/int8_matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>

#include "core/env.h"
#include "core/error.h"
#include "core/format.h"
#include "core/graph.h"
#include "nn/layers.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ACE_INT8_X86 1
#define ACE_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#endif

namespace ace {

namespace {

constexpr int64_t kGroup = 64;  // output channels per packed row
constexpr int kTileRows = 6;
constexpr int64_t kRowsPerTask = 96;  // rows of one work item (16 tiles)

int64_t padded_in(int64_t in) { return (in + 63) / 64 * 64; }
int64_t group_bytes(int64_t kp) { return kp * kGroup + kGroup * 8; }
int64_t act_row_bytes(int64_t kp) { return kp + 64; }

// The packed weight of a Linear [out, in]: one I8 row of group_bytes per group of 64 channels.
ggml_tensor *new_packed(ggml_context *ctx, int64_t in, int64_t out) {
    return ggml_new_tensor_2d(ctx, GGML_TYPE_I8, group_bytes(padded_in(in)), (out + kGroup - 1) / kGroup);
}

// Channels [c0, c1) of a weight [n_out, in] into their groups of `dst`; row(c, buf) gives channel c's
// values as float (buf: `in` floats of scratch it may fill).
template <class Row>
void pack_rows(Row row_of, int64_t in, int64_t c0, int64_t c1, uint8_t *dst) {
    const int64_t kp = padded_in(in), gb = group_bytes(kp);
    std::vector<float> scratch((size_t)in);
    std::vector<int8_t> q((size_t)kp, 0);
    for (int64_t c = c0; c < c1; c++) {
        const float *row = row_of(c, scratch.data());
        // The largest magnitude by the bits: a non-negative float's bits order like its value, and
        // an integer max is a loop the compiler vectorises; NaN and inf sort above every finite.
        uint32_t top = 0;
        for (int64_t k = 0; k < in; k++) {
            uint32_t bits;
            std::memcpy(&bits, row + k, 4);
            top = std::max(top, bits & 0x7fffffffu);
        }
        float amax;
        std::memcpy(&amax, &top, 4);
        // A non-finite weight makes its channel's outputs NaN, as the float product would.
        const bool finite = top < 0x7f800000u;
        const float scale = finite ? amax / 127.0f : NAN, inv = finite && amax > 0 ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int64_t k = 0; k < in; k++) {  // |v| <= 127 (up to rounding); halves round away from zero
            const float v = std::max(-127.0f, std::min(127.0f, row[k] * inv));
            q[k] = (int8_t)(int)(v + (v >= 0.0f ? 0.5f : -0.5f));
            sum += q[k];
        }
        uint8_t *g = dst + (c / kGroup) * gb + 64 * ((c % kGroup) / 16) + 4 * (c % 16);
        // Inputs k..k+3 of this channel: quad k/4 of its block, at 256 (k/4) = 64 k past g.
        for (int64_t k = 0; k < kp; k += 4) std::memcpy(g + 64 * k, q.data() + k, 4);
        g = dst + (c / kGroup) * gb;
        const int32_t offset_sum = 128 * sum;
        std::memcpy(g + kp * kGroup + 4 * (c % kGroup), &offset_sum, 4);
        std::memcpy(g + kp * kGroup + 4 * kGroup + 4 * (c % kGroup), &scale, 4);
    }
}

// Packs n_out channels with n_threads workers, each taking whole groups (no two write one group's sums).
template <class Row>
void pack_weight(Row row_of, int64_t n_out, int64_t in, uint8_t *dst, int n_threads) {
    const int64_t groups = (n_out + kGroup - 1) / kGroup;
    std::memset(dst, 0, (size_t)(groups * group_bytes(padded_in(in))));
    const int workers = (int)std::max<int64_t>(1, std::min<int64_t>(n_threads, groups));
    std::vector<std::thread> pool;
    auto work = [&](int t) {
        const int64_t g0 = groups * t / workers, g1 = groups * (t + 1) / workers;
        pack_rows(row_of, in, std::min(n_out, g0 * kGroup), std::min(n_out, g1 * kGroup), dst);
    };
    for (int t = 1; t < workers; t++) pool.emplace_back(work, t);
    work(0);
    for (auto &th : pool) th.join();
}

// A weight in host memory (the CPU backend's, or its file mapping), any float or quantized type:
// each worker converts its own rows.
void pack_tensor(const ggml_tensor *w, uint8_t *dst, int n_threads) {
    const int64_t in = w->ne[0], n_out = w->ne[1];
    const ggml_type_traits *tr = ggml_get_type_traits(w->type);
    if (w->type != GGML_TYPE_F32 && !tr->to_float)
        throw Error(fmt("int8: no conversion to F32 for %s", ggml_type_name(w->type)));
    if (!w->buffer || !ggml_backend_buffer_is_host(w->buffer) || !ggml_is_contiguous(w))
        throw Error("int8: the weight is not in host memory");
    auto row_of = [&](int64_t c, float *buf) -> const float * {
        const char *src = (const char *)w->data + c * w->nb[1];
        if (w->type == GGML_TYPE_F32) return (const float *)src;
        tr->to_float(src, buf, in);
        return buf;
    };
    pack_weight(row_of, n_out, in, dst, n_threads);
}

#ifdef ACE_INT8_X86

// dst (I8 [act_row_bytes, rows]) = the rows of src (F32 [in, rows], contiguous), quantized.
ACE_VNNI void quantize_op(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *src = dst->src[0];
    const int64_t in = src->ne[0], rows = src->ne[1], kp = padded_in(in);
    const int64_t r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    const __mmask16 tail = (__mmask16)((1u << (in % 16)) - 1);
    for (int64_t r = r0; r < r1; r++) {
        const float *x = (const float *)((const char *)src->data + r * src->nb[1]);
        uint8_t *q = (uint8_t *)dst->data + r * dst->nb[1];
        __m512 amax = _mm512_setzero_ps();
        __mmask16 bad = 0;
        int64_t k = 0;
        for (; k + 16 <= in; k += 16) {
            const __m512 v = _mm512_loadu_ps(x + k);
            bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        }
        if (tail) {
            const __m512 v = _mm512_maskz_loadu_ps(tail, x + k);
            bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        }
        const float a = _mm512_reduce_max_ps(amax);
        const bool finite = !bad && std::isfinite(a);
        const float scale = finite ? a / 127.0f : NAN;
        const __m512 inv = _mm512_set1_ps(finite && a > 0 ? 127.0f / a : 0.0f);
        const __m512i offset = _mm512_set1_epi32(128);
        for (k = 0; k + 16 <= in; k += 16) {
            const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), inv));  // round to nearest even
            _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtusepi32_epi8(_mm512_add_epi32(v, offset)));
        }
        if (tail) {
            const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + k), inv));
            _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtusepi32_epi8(_mm512_add_epi32(v, offset)));
            k += 16;
        }
        std::memset(q + in, 128, (size_t)(kp - in));  // padding: the value 0
        std::memcpy(q + kp, &scale, 4);
    }
}

// One tile: rows [0, MR) of `a` (quantized rows, stride lda) times one group `g`; writes the
// first n_valid of its 64 channels of each row of y (stride ldy).
template <int MR>
ACE_VNNI inline void tile(const uint8_t *a, int64_t lda, const uint8_t *g, int64_t kp, float *y, int64_t ldy,
                          int n_valid) {
#define ACE_ACC(i) __m512i c##i##0 = _mm512_setzero_si512(), c##i##1 = c##i##0, c##i##2 = c##i##0, c##i##3 = c##i##0;
    ACE_ACC(0) ACE_ACC(1) ACE_ACC(2) ACE_ACC(3) ACE_ACC(4) ACE_ACC(5)
#undef ACE_ACC
    const int64_t quads = kp / 4;
    for (int64_t q = 0; q < quads; q++) {
        const uint8_t *b = g + 256 * q;
        const __m512i w0 = _mm512_loadu_si512(b), w1 = _mm512_loadu_si512(b + 64), w2 = _mm512_loadu_si512(b + 128),
                      w3 = _mm512_loadu_si512(b + 192);
#define ACE_ROW(i)                                                                                  \
    if constexpr (MR > i) {                                                                         \
        int32_t bytes;                                                                              \
        std::memcpy(&bytes, a + i * lda + 4 * q, 4);                                                \
        const __m512i x = _mm512_set1_epi32(bytes);                                                 \
        c##i##0 = _mm512_dpbusd_epi32(c##i##0, x, w0);                                              \
        c##i##1 = _mm512_dpbusd_epi32(c##i##1, x, w1);                                              \
        c##i##2 = _mm512_dpbusd_epi32(c##i##2, x, w2);                                              \
        c##i##3 = _mm512_dpbusd_epi32(c##i##3, x, w3);                                              \
    }
        ACE_ROW(0) ACE_ROW(1) ACE_ROW(2) ACE_ROW(3) ACE_ROW(4) ACE_ROW(5)
#undef ACE_ROW
    }
    const int32_t *sums = (const int32_t *)(g + kp * kGroup);
    const float *scales = (const float *)(g + kp * kGroup + 4 * kGroup);
    __mmask16 masks[4];
    for (int j = 0; j < 4; j++) {
        const int left = std::max(0, std::min(16, n_valid - 16 * j));
        masks[j] = (__mmask16)((1u << left) - 1);
    }
#define ACE_OUT(i, j)                                                                                           \
    if (masks[j]) {                                                                                             \
        const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##i##j, _mm512_loadu_si512(sums + 16 * j)));      \
        const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(scales + 16 * j), sx);                                    \
        _mm512_mask_storeu_ps(y + i * ldy + 16 * j, masks[j], _mm512_mul_ps(v, s));                             \
    }
#define ACE_STORE(i)                                                                                            \
    if constexpr (MR > i) {                                                                                     \
        float sxf;                                                                                              \
        std::memcpy(&sxf, a + i * lda + kp, 4);                                                                 \
        const __m512 sx = _mm512_set1_ps(sxf);                                                                  \
        ACE_OUT(i, 0) ACE_OUT(i, 1) ACE_OUT(i, 2) ACE_OUT(i, 3)                                                 \
    }
    ACE_STORE(0) ACE_STORE(1) ACE_STORE(2) ACE_STORE(3) ACE_STORE(4) ACE_STORE(5)
#undef ACE_STORE
#undef ACE_OUT
}

// dst (F32 [n_out, rows]) = packed weight (src[0]) × quantized rows (src[1]).  Work items are a
// group × up to 96 rows, split evenly between the threads.
ACE_VNNI void matmul_op(ggml_tensor *dst, int ith, int nth, void *) {
    const ggml_tensor *w = dst->src[0], *xq = dst->src[1];
    const int64_t n_out = dst->ne[0], rows = dst->ne[1], kp = xq->ne[0] - 64, groups = w->ne[1];
    const int64_t row_blocks = (rows + kRowsPerTask - 1) / kRowsPerTask, items = groups * row_blocks;
    for (int64_t it = items * ith / nth; it < items * (ith + 1) / nth; it++) {
        const int64_t g = it / row_blocks, r0 = (it % row_blocks) * kRowsPerTask;
        const int64_t r1 = std::min(rows, r0 + kRowsPerTask);
        const uint8_t *gp = (const uint8_t *)w->data + g * w->nb[1];
        const int n_valid = (int)std::min<int64_t>(kGroup, n_out - g * kGroup);
        float *y0 = (float *)dst->data + g * kGroup;
        const int64_t ldy = dst->nb[1] / sizeof(float), lda = xq->nb[1];
        const uint8_t *a0 = (const uint8_t *)xq->data;
        int64_t r = r0;
        for (; r + kTileRows <= r1; r += kTileRows) tile<6>(a0 + r * lda, lda, gp, kp, y0 + r * ldy, ldy, n_valid);
        switch (r1 - r) {
            case 5: tile<5>(a0 + r * lda, lda, gp, kp, y0 + r * ldy, ldy, n_valid); break;
            case 4: tile<4>(a0 + r * lda, lda, gp, kp, y0 + r * ldy, ldy, n_valid); break;
            case 3: tile<3>(a0 + r * lda, lda, gp, kp, y0 + r * ldy, ldy, n_valid); break;
            case 2: tile<2>(a0 + r * lda, lda, gp, kp, y0 + r * ldy, ldy, n_valid); break;
            case 1: tile<1>(a0 + r * lda, lda, gp, kp, y0 + r * ldy, ldy, n_valid); break;
            default: break;
        }
    }
}

#else

void quantize_op(ggml_tensor *, int, int, void *) {}
void matmul_op(ggml_tensor *, int, int, void *) {}

#endif

}  // namespace

bool int8_matmul_supported() {
#ifdef ACE_INT8_X86
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512vnni");
    return ok;
#else
    return false;
#endif
}

Int8Linears::Int8Linears(Weights &weights, const std::vector<Linear *> &linears, int n_threads)
    : n_threads_(std::max(1, n_threads)) {
    if (!int8_matmul_supported()) throw DeviceError("int8 matmuls need a CPU with AVX-512 VNNI (ACESTEP_GGML_INT8)");
    if (!weights.backend()->is_cpu())
        throw DeviceError("int8 matmuls run on the CPU only, not on " + weights.backend()->name() +
                          " (ACESTEP_GGML_INT8)");
    ggml_init_params p = {ggml_tensor_overhead() * (linears.size() + 1), nullptr, /*no_alloc=*/true};
    ctx_ = ggml_init(p);
    for (Linear *lin : linears) {
        if (lin->name.empty()) throw Error("Int8Linears: a Linear without a weight name");
        const int64_t in = lin->weight->ne[0], out = lin->weight->ne[1];
        lin->packed = new_packed(ctx_, in, out);
        ggml_set_name(lin->packed, "int8");
    }
    buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, weights.backend()->primary());
    if (!buffer_) {
        ggml_free(ctx_);
        throw DeviceError(fmt("%s: could not allocate the int8 weights", weights.file().path().c_str()));
    }
    ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    try {
        for (Linear *lin : linears) {
            repack(*lin);
            weights.evict(lin->name);
        }
    } catch (...) {  // the destructor does not run for a constructor that throws
        ggml_backend_buffer_free(buffer_);
        ggml_free(ctx_);
        throw;
    }
}

Int8Linears::~Int8Linears() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
}

void Int8Linears::repack(const Linear &lin) const {
    pack_tensor(lin.weight, (uint8_t *)lin.packed->data, n_threads_);
}

std::unique_ptr<Int8Linears> int8_if_asked(Weights &weights, const std::vector<Linear *> &linears) {
    if (!env::int8()) return nullptr;
    return std::make_unique<Int8Linears>(weights, linears, weights.backend()->n_threads());
}

size_t Int8Linears::nbytes() const { return buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0; }

ggml_tensor *int8_matmul(ggml_context *ctx, ggml_tensor *packed, ggml_tensor *x, int64_t n_out) {
    const int64_t kp = padded_in(x->ne[0]);
    if (packed->ne[0] != group_bytes(kp) || packed->ne[1] != (n_out + kGroup - 1) / kGroup)
        throw Error(fmt("int8_matmul: a packed weight of %lld x %lld bytes for %lld inputs and %lld outputs",
                        (long long)packed->ne[0], (long long)packed->ne[1], (long long)x->ne[0], (long long)n_out));
    ggml_tensor *args[2] = {x, nullptr};
    ggml_tensor *xq = ggml_custom_4d(ctx, GGML_TYPE_I8, act_row_bytes(kp), x->ne[1], 1, 1, args, 1, quantize_op,
                                     GGML_N_TASKS_MAX, nullptr);
    args[0] = packed;
    args[1] = xq;
    return ggml_custom_4d(ctx, GGML_TYPE_F32, n_out, x->ne[1], 1, 1, args, 2, matmul_op, GGML_N_TASKS_MAX, nullptr);
}

std::vector<float> int8_matmul_host(const std::vector<float> &w, int64_t n_out, int64_t in, const std::vector<float> &x,
                                    int64_t rows, int n_threads) {
    if (!int8_matmul_supported()) throw DeviceError("int8 matmuls need a CPU with AVX-512 VNNI");
    if (n_out < 1 || in < 1 || rows < 1 || (int64_t)w.size() != n_out * in || (int64_t)x.size() != rows * in)
        throw InputError(fmt("int8_matmul: %zu weights for %lld x %lld, %zu inputs for %lld x %lld", w.size(),
                             (long long)n_out, (long long)in, x.size(), (long long)rows, (long long)in));
    auto backend = Backend::get("cpu", n_threads);
    ggml_init_params p = {ggml_tensor_overhead() * 2, nullptr, /*no_alloc=*/true};
    ggml_context *wctx = ggml_init(p);
    ggml_tensor *packed = new_packed(wctx, in, n_out);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(wctx, backend->primary());
    std::vector<float> out;
    try {
        if (!buf) throw DeviceError("int8_matmul: could not allocate the packed weight");
        pack_weight([&](int64_t c, float *) { return w.data() + c * in; }, n_out, in, (uint8_t *)packed->data,
                    n_threads);
        Graph g;
        ggml_tensor *xt = g.input("x", GGML_TYPE_F32, {rows, in});
        ggml_tensor *y = int8_matmul(g.ctx(), packed, xt, n_out);
        g.output(y);
        Runner r(backend);
        r.alloc(g);
        set_input(xt, x.data(), x.size());
        r.compute(g);
        out = get_output(y);
    } catch (...) {
        if (buf) ggml_backend_buffer_free(buf);
        ggml_free(wctx);
        throw;
    }
    ggml_backend_buffer_free(buf);
    ggml_free(wctx);
    return out;
}

}  // namespace ace

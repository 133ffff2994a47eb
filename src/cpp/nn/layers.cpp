// layers.cpp: linear, RMSNorm, SwiGLU, RoPE, embeddings.
#include "nn/layers.h"

#include "core/error.h"
#include "core/format.h"
#include "nn/int8_matmul.h"

namespace ace {

void Linear::load(Weights &w, const std::string &prefix, int64_t in, int64_t out, bool has_bias) {
    name = prefix + ".weight";
    weight = w.get(name, {out, in}, Store::Keep);
    bias = has_bias ? w.get(prefix + ".bias", {out}, Store::F32) : nullptr;
}

// Δ(x) of one branch for x [in, R] -> [out, R].
static ggml_tensor *branch(ggml_context *ctx, const AdapterBranch &br, ggml_tensor *x) {
    if (br.a) return ggml_mul_mat(ctx, br.b, ggml_mul_mat(ctx, br.a, x));
    // (w1 ⊗ w2) x: ΔW[i1·o2 + i2, j1·n2 + j2] = w1[i1, j1] · w2[i2, j2].  With X[j1, j2] =
    // x[j1·n2 + j2]: Y = X w2ᵀ [n1, o2], then Z = w1 Y [o1, o2], flattened row-major.
    const int64_t n2 = br.w2->ne[0], o2 = br.w2->ne[1], n1 = br.w1->ne[0], o1 = br.w1->ne[1], R = x->ne[1];
    ggml_tensor *y = ggml_mul_mat(ctx, br.w2, ggml_reshape_2d(ctx, x, n2, n1 * R));   // ne (o2, n1·R)
    y = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, y, o2, n1, R), 1, 0, 2, 3));  // ne (n1, o2, R)
    y = ggml_mul_mat(ctx, br.w1, ggml_reshape_2d(ctx, y, n1, o2 * R));  // one product: ne (o1, o2·R)
    y = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, y, o1, o2, R), 1, 0, 2, 3));  // ne (o2, o1, R)
    return ggml_reshape_2d(ctx, y, o1 * o2, R);
}

static ggml_tensor *adapted(ggml_context *ctx, const LinearAdapter &ad, ggml_tensor *x, ggml_tensor *y) {
    if (ad.rows) y = ggml_mul(ctx, y, ad.rows);
    for (const AdapterBranch &br : ad.branches) {
        ggml_tensor *d = branch(ctx, br, x);
        if (br.rows) d = ggml_mul(ctx, d, br.rows);
        y = ggml_add(ctx, y, ggml_scale(ctx, d, br.scale));
    }
    return y;
}

ggml_tensor *Linear::operator()(ggml_context *ctx, ggml_tensor *x) const {
    // One [in, rows] product: mul_mat over a 3-D/4-D x would run one small GEMM per batch
    // slice and re-read the weight for each (the detokenizer has a batch of N sequences of 5).
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor *x2 = ggml_reshape_2d(ctx, x, x->ne[0], ggml_nrows(x));
    ggml_tensor *y = packed && x2->type == GGML_TYPE_F32 ? int8_matmul(ctx, packed, x2, weight->ne[1])
                                                        : ggml_mul_mat(ctx, weight, x2);
    if (adapter) y = adapted(ctx, *adapter, x2, y);
    y = ggml_reshape_4d(ctx, y, weight->ne[1], x->ne[1], x->ne[2], x->ne[3]);
    return bias ? ggml_add(ctx, y, bias) : y;
}

void RMSNorm::load(Weights &w, const std::string &name, int64_t dim, float eps_) {
    weight = w.get(name, {dim}, Store::F32);
    eps = eps_;
}

ggml_tensor *RMSNorm::operator()(ggml_context *ctx, ggml_tensor *x) const {
    return ggml_mul(ctx, ggml_rms_norm(ctx, x, eps), weight);
}

ggml_tensor *rope_neox(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, float theta) {
    return ggml_rope_ext(ctx, x, pos, nullptr, (int)x->ne[0], GGML_ROPE_TYPE_NEOX, 0, theta, 1.0f, 0.0f, 1.0f,
                         0.0f, 0.0f);
}

void SwiGLU::load(Weights &w, const std::string &p, int64_t hidden, int64_t intermediate) {
    gate_proj.load(w, p + "gate_proj", hidden, intermediate, false);
    up_proj.load(w, p + "up_proj", hidden, intermediate, false);
    down_proj.load(w, p + "down_proj", intermediate, hidden, false);
}

ggml_tensor *SwiGLU::operator()(ggml_context *ctx, ggml_tensor *x) const {
    return down_proj(ctx, ggml_swiglu_split(ctx, gate_proj(ctx, x), up_proj(ctx, x)));
}

std::vector<int32_t> iota(int64_t n) {
    std::vector<int32_t> v(n);
    for (int64_t i = 0; i < n; i++) v[i] = (int32_t)i;
    return v;
}

void check_token_ids(const std::vector<int32_t> &ids, int64_t vocab, const char *what) {
    if (ids.empty()) throw InputError(fmt("%s is empty: need at least one token id", what));
    for (size_t i = 0; i < ids.size(); i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            throw InputError(fmt("%s[%zu] = %d is outside the vocabulary [0, %lld)", what, i, ids[i],
                                 (long long)vocab));
}

}  // namespace ace

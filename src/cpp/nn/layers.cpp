// layers.cpp: linear, RMSNorm, SwiGLU, RoPE, embeddings.
#include "nn/layers.h"

#include "core/error.h"
#include "core/format.h"

namespace ace {

void Linear::load(Weights &w, const std::string &prefix, int64_t in, int64_t out, bool has_bias) {
    weight = w.get(prefix + ".weight", {out, in}, Store::Keep);
    bias = has_bias ? w.get(prefix + ".bias", {out}, Store::F32) : nullptr;
}

ggml_tensor *Linear::operator()(ggml_context *ctx, ggml_tensor *x) const {
    // One [in, rows] product: mul_mat over a 3-D/4-D x would run one small GEMM per batch
    // slice and re-read the weight for each (the detokenizer has a batch of N sequences of 5).
    if (!ggml_is_contiguous(x)) x = ggml_cont(ctx, x);
    ggml_tensor *y = ggml_mul_mat(ctx, weight, ggml_reshape_2d(ctx, x, x->ne[0], ggml_nrows(x)));
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

// blocks.cpp: shared transformer blocks and masks.
#include "blocks.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

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

bool use_flash_attention() {
    static const bool flash = [] {
        const char *v = std::getenv("ACESTEP_GGML_ATTN");
        return !(v && std::strcmp(v, "matmul") == 0);
    }();
    return flash;
}

ggml_tensor *attention(ggml_context *ctx, ggml_tensor *q, ggml_tensor *k, ggml_tensor *v, ggml_tensor *mask,
                       float scale) {
    const int64_t d = q->ne[0], tq = q->ne[1], h = q->ne[2], b = q->ne[3];
    if (use_flash_attention()) {
        ggml_tensor *o = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);
        return ggml_reshape_3d(ctx, o, d * h, tq, b);  // o: [D, H, Tq, B]
    }
    ggml_tensor *kq = ggml_mul_mat(ctx, k, q);                           // [Tk, Tq, H, B]
    kq = ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f);
    ggml_tensor *vt = ggml_cont(ctx, ggml_permute(ctx, v, 1, 0, 2, 3));  // [Tk, D, Hkv, B]
    ggml_tensor *o = ggml_mul_mat(ctx, vt, kq);                          // [D, Tq, H, B]
    o = ggml_cont(ctx, ggml_permute(ctx, o, 0, 2, 1, 3));                // [D, H, Tq, B]
    return ggml_reshape_3d(ctx, o, d * h, tq, b);
}

void Attention::load(Weights &w, const std::string &p, const Dims &d, bool has_bias) {
    n_head = d.n_head;
    n_kv_head = d.n_kv_head;
    head_dim = d.head_dim;
    rope_theta = d.rope_theta;
    q_proj.load(w, p + "q_proj", d.hidden, n_head * head_dim, has_bias);
    k_proj.load(w, p + "k_proj", d.hidden, n_kv_head * head_dim, has_bias);
    v_proj.load(w, p + "v_proj", d.hidden, n_kv_head * head_dim, has_bias);
    o_proj.load(w, p + "o_proj", n_head * head_dim, d.hidden, has_bias);
    q_norm.load(w, p + "q_norm.weight", head_dim, d.eps);
    k_norm.load(w, p + "k_norm.weight", head_dim, d.eps);
}

ggml_tensor *Attention::query(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos) const {
    ggml_tensor *q = ggml_reshape_4d(ctx, q_proj(ctx, x), head_dim, n_head, x->ne[1], x->ne[2]);
    q = q_norm(ctx, q);
    return pos ? rope_neox(ctx, q, pos, rope_theta) : q;
}

ggml_tensor *Attention::key(ggml_context *ctx, ggml_tensor *src, ggml_tensor *pos) const {
    ggml_tensor *k = ggml_reshape_4d(ctx, k_proj(ctx, src), head_dim, n_kv_head, src->ne[1], src->ne[2]);
    k = k_norm(ctx, k);
    return pos ? rope_neox(ctx, k, pos, rope_theta) : k;
}

ggml_tensor *Attention::value(ggml_context *ctx, ggml_tensor *src) const {
    return ggml_reshape_4d(ctx, v_proj(ctx, src), head_dim, n_kv_head, src->ne[1], src->ne[2]);
}

ggml_tensor *Attention::attend(ggml_context *ctx, ggml_tensor *q, ggml_tensor *k, ggml_tensor *v,
                                   ggml_tensor *mask) const {
    // [D, H, T, B] -> [D, T, H, B]: heads become the batch dimension of the attention.
    q = ggml_permute(ctx, q, 0, 2, 1, 3);
    k = ggml_permute(ctx, k, 0, 2, 1, 3);
    v = ggml_permute(ctx, v, 0, 2, 1, 3);
    ggml_tensor *o = attention(ctx, q, k, v, mask, 1.0f / std::sqrt((float)head_dim));
    return o_proj(ctx, o);
}

ggml_tensor *Attention::operator()(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask) const {
    return attend(ctx, query(ctx, x, pos), key(ctx, x, pos), value(ctx, x), mask);
}

void SwiGLU::load(Weights &w, const std::string &p, int64_t hidden, int64_t intermediate) {
    gate_proj.load(w, p + "gate_proj", hidden, intermediate, false);
    up_proj.load(w, p + "up_proj", hidden, intermediate, false);
    down_proj.load(w, p + "down_proj", intermediate, hidden, false);
}

ggml_tensor *SwiGLU::operator()(ggml_context *ctx, ggml_tensor *x) const {
    return down_proj(ctx, ggml_swiglu_split(ctx, gate_proj(ctx, x), up_proj(ctx, x)));
}

void Qwen3Layer::load(Weights &w, const std::string &p, const Dims &d) {
    input_layernorm.load(w, p + "input_layernorm.weight", d.hidden, d.eps);
    post_attention_layernorm.load(w, p + "post_attention_layernorm.weight", d.hidden, d.eps);
    self_attn.load(w, p + "self_attn.", d);
    mlp.load(w, p + "mlp.", d.hidden, d.intermediate);
}

ggml_tensor *Qwen3Layer::operator()(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask) const {
    x = ggml_add(ctx, x, self_attn(ctx, input_layernorm(ctx, x), pos, mask));
    return ggml_add(ctx, x, mlp(ctx, post_attention_layernorm(ctx, x)));
}

Dims dims_from_layer(const GGUFFile &f, const std::string &p, float eps, float rope_theta) {
    Dims d;
    auto q = f.require(p + "self_attn.q_proj.weight").torch_shape();
    auto k = f.require(p + "self_attn.k_proj.weight").torch_shape();
    auto qn = f.require(p + "self_attn.q_norm.weight").torch_shape();
    auto up = f.require(p + "mlp.up_proj.weight").torch_shape();
    if (q.size() != 2 || k.size() != 2 || qn.empty() || up.size() != 2 || qn.back() <= 0 ||
        q[0] % qn.back() != 0 || k[0] % qn.back() != 0 || k[1] != q[1] || up[1] != q[1])
        throw FileError(fmt("%s: inconsistent attention/MLP shapes under '%s'", f.path().c_str(), p.c_str()));
    d.head_dim = qn.back();
    d.hidden = q[1];
    d.n_head = q[0] / d.head_dim;
    d.n_kv_head = k[0] / d.head_dim;
    if (d.n_kv_head == 0 || d.n_head % d.n_kv_head != 0)
        throw FileError(fmt("%s: %lld query heads are not a multiple of %lld key/value heads under '%s'",
                            f.path().c_str(), (long long)d.n_head, (long long)d.n_kv_head, p.c_str()));
    d.intermediate = up[0];
    d.eps = eps;
    d.rope_theta = rope_theta;
    return d;
}

int count_layers(const GGUFFile &f, const std::string &prefix) {
    int n = 0;
    while (f.find(prefix + std::to_string(n) + ".input_layernorm.weight")) n++;
    return n;
}

std::vector<ggml_fp16_t> make_mask(int64_t tq, int64_t tk, MaskKind kind, int64_t window,
                                   const std::vector<uint8_t> &key_valid) {
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), neg = ggml_fp32_to_fp16(-INFINITY);
    std::vector<ggml_fp16_t> m(tq * tk);
    for (int64_t i = 0; i < tq; i++) {
        bool any = false;
        for (int64_t j = 0; j < tk; j++) {
            bool ok = key_valid.empty() || key_valid[j];
            if (kind == MaskKind::Causal) ok = ok && j <= i + (tk - tq);  // queries are the last tq of tk positions
            if (kind == MaskKind::Window) ok = ok && std::llabs(i - j) <= window;
            m[i * tk + j] = ok ? zero : neg;
            any = any || ok;
        }
        if (!any) std::fill(m.begin() + i * tk, m.begin() + (i + 1) * tk, zero);
    }
    return m;
}

float arch_f32(const GGUFFile &f, const std::string &key, float fallback) {
    return f.get_f32(f.architecture() + "." + key, fallback);
}

Dims qwen3_dims(const GGUFFile &f, const std::string &layers_prefix) {
    return dims_from_layer(f, layers_prefix + "0.", arch_f32(f, "attention.layer_norm_rms_epsilon", 1e-6f),
                           arch_f32(f, "rope.freq_base", 1e6f));
}

ggml_tensor *load_embedding(Weights &w, const std::string &name, int64_t hidden, int64_t &vocab) {
    auto e = w.file().require(name).torch_shape();
    if (e.size() != 2 || e[1] != hidden)
        throw FileError(fmt("%s: %s has shape %s, expected [vocab, %lld]", w.file().path().c_str(), name.c_str(),
                            shape_str(e).c_str(), (long long)hidden));
    vocab = e[0];
    return w.get(name, {vocab, hidden});
}

std::vector<int32_t> iota(int64_t n) {
    std::vector<int32_t> v(n);
    for (int64_t i = 0; i < n; i++) v[i] = (int32_t)i;
    return v;
}

}  // namespace ace

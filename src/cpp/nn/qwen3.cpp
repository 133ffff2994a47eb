// qwen3.cpp: the Qwen3 layer and encoder stacks.
#include "nn/qwen3.h"

#include "core/error.h"
#include "core/format.h"

namespace ace {

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

void EncoderStack::load(Weights &w, const std::string &p, int64_t in_dim, float eps, float theta, int64_t win) {
    const GGUFFile &f = w.file();
    Dims d = dims_from_layer(f, p + "layers.0.", eps, theta);
    if (in_dim > 0) embed_tokens.load(w, p + "embed_tokens", in_dim, d.hidden, true);
    int n = count_layers(f, p + "layers.");
    layers.resize(n);
    for (int i = 0; i < n; i++) layers[i].load(w, p + "layers." + std::to_string(i) + ".", d);
    norm.load(w, p + "norm.weight", d.hidden, eps);
    window = win;
}

ggml_tensor *EncoderStack::layers_and_norm(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos,
                                           ggml_tensor *window_mask, ggml_tensor *full_mask) const {
    for (size_t i = 0; i < layers.size(); i++) x = layers[i](ctx, x, pos, i % 2 == 0 ? window_mask : full_mask);
    return norm(ctx, x);
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

float arch_f32(const GGUFFile &f, const std::string &key, float fallback) {
    return f.get_f32(f.architecture() + "." + key, fallback);
}

Dims qwen3_dims(const GGUFFile &f, const std::string &layers_prefix) {
    return dims_from_layer(f, layers_prefix + "0.", arch_f32(f, "attention.layer_norm_rms_epsilon", 1e-6f),
                           arch_f32(f, "rope.freq_base", 1e6f));
}

}  // namespace ace

// qwen3.cpp: the Qwen3 layer and encoder stacks.
#include "nn/qwen3.h"

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

void EncoderStack::load(Weights &w, const std::string &p, int64_t in_dim, const Dims &d, std::vector<bool> sliding_,
                        int64_t window_) {
    embed_tokens.load(w, p + "embed_tokens", in_dim, d.hidden, true);
    sliding = std::move(sliding_);
    layers.resize(sliding.size());
    for (size_t i = 0; i < layers.size(); i++) layers[i].load(w, p + "layers." + std::to_string(i) + ".", d);
    norm.load(w, p + "norm.weight", d.hidden, d.eps);
    window = window_;
}

ggml_tensor *EncoderStack::layers_and_norm(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos,
                                           ggml_tensor *window_mask, ggml_tensor *full_mask) const {
    for (size_t i = 0; i < layers.size(); i++) x = layers[i](ctx, x, pos, sliding[i] ? window_mask : full_mask);
    return norm(ctx, x);
}

}  // namespace ace

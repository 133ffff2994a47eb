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

// The first `rows` positions of a [C, T, B] tensor, contiguous.
static ggml_tensor *head_rows(ggml_context *ctx, ggml_tensor *x, int64_t rows) {
    return ggml_cont(ctx, ggml_view_3d(ctx, x, x->ne[0], rows, x->ne[2], x->nb[1], x->nb[2], 0));
}

ggml_tensor *Qwen3Layer::first_rows(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask,
                                    int64_t rows) const {
    ggml_tensor *h = input_layernorm(ctx, x);
    ggml_tensor *q = self_attn.query(ctx, head_rows(ctx, h, rows), pos ? ggml_view_1d(ctx, pos, rows, 0) : nullptr);
    // The mask's first rows (queries) over every key: a contiguous view.
    ggml_tensor *m = mask ? ggml_view_2d(ctx, mask, mask->ne[0], rows, mask->nb[1], 0) : nullptr;
    x = ggml_add(ctx, head_rows(ctx, x, rows), self_attn.attend(ctx, q, self_attn.key(ctx, h, pos),
                                                                 self_attn.value(ctx, h), m));
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
                                           ggml_tensor *window_mask, ggml_tensor *full_mask, int64_t rows) const {
    for (size_t i = 0; i < layers.size(); i++) {
        ggml_tensor *mask = sliding[i] ? window_mask : full_mask;
        x = rows > 0 && i + 1 == layers.size() ? layers[i].first_rows(ctx, x, pos, mask, rows)
                                               : layers[i](ctx, x, pos, mask);
    }
    return norm(ctx, rows > 0 && layers.empty() ? head_rows(ctx, x, rows) : x);
}

}  // namespace ace

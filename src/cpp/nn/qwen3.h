// qwen3.h: the pre-norm Qwen3 decoder layer and the bidirectional encoder stacks built of it.
#pragma once

#include <string>
#include <vector>

#include "nn/attention.h"

namespace ace {

// Pre-norm decoder layer (Qwen3DecoderLayer, AceStepEncoderLayer).
struct Qwen3Layer {
    RMSNorm input_layernorm, post_attention_layernorm;
    Attention self_attn;
    SwiGLU mlp;
    void load(Weights &w, const std::string &prefix, const Dims &d);
    // x: [C, T, B] -> [C, T, B]
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask) const;
};

// A stack of bidirectional Qwen3 layers, even layers sliding-window, odd layers full
// (AceStepLyricEncoder / AceStepTimbreEncoder / the tokenizer's attention pooler / the
// detokenizer's layers).
struct EncoderStack {
    Linear embed_tokens;
    std::vector<Qwen3Layer> layers;
    RMSNorm norm;
    int64_t window = 128;
    void load(Weights &w, const std::string &prefix, int64_t in_dim, float eps, float theta, int64_t window);
    // x: [C, T, B] -> [C, T, B]; masks are F16 [T, T] (null: no masking).
    ggml_tensor *layers_and_norm(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *window_mask,
                                 ggml_tensor *full_mask) const;
};

// Dims of a Qwen3 layer read from its tensors' shapes ("<prefix>self_attn.q_norm.weight", ...),
// with eps and RoPE theta supplied by the caller from the metadata.
Dims dims_from_layer(const GGUFFile &f, const std::string &prefix, float eps, float rope_theta);
// How many "<prefix>N.input_layernorm.weight" exist for N = 0, 1, ...
int count_layers(const GGUFFile &f, const std::string &prefix);
// Dims of a Qwen3 stack whose layers are "<layers_prefix>N.", with eps and RoPE theta from
// the standard keys under the file's architecture.
Dims qwen3_dims(const GGUFFile &f, const std::string &layers_prefix);
// A standard key under the file's architecture prefix ("<arch>.rope.freq_base").
float arch_f32(const GGUFFile &f, const std::string &key, float fallback);

}  // namespace ace

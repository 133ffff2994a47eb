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
    void linears(std::vector<Linear *> &out) {
        self_attn.linears(out);
        mlp.linears(out);
    }
    // x: [C, T, B] -> [C, T, B]
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask) const;
    // The same layer where only the first `rows` positions of its output are wanted: keys and
    // values cover every position, queries, the attention output and the MLP only those rows.
    // x: [C, T, B] -> [C, rows, B]; the same numbers as operator()'s first rows.
    ggml_tensor *first_rows(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask,
                            int64_t rows) const;
};

// A stack of bidirectional Qwen3 layers, each sliding-window or full attention
// (AceStepLyricEncoder / AceStepTimbreEncoder / the tokenizer's attention pooler / the
// detokenizer's layers).
struct EncoderStack {
    Linear embed_tokens;
    std::vector<Qwen3Layer> layers;
    std::vector<bool> sliding;  // per layer
    RMSNorm norm;
    int64_t window = 0;
    // The input projection in_dim -> d.hidden, one layer per entry of `sliding` (sliding-window
    // or full attention: DiTHParams::sliding_layers), the final norm.
    void load(Weights &w, const std::string &prefix, int64_t in_dim, const Dims &d, std::vector<bool> sliding,
              int64_t window);
    void linears(std::vector<Linear *> &out) {
        out.push_back(&embed_tokens);
        for (Qwen3Layer &l : layers) l.linears(out);
    }
    // x: [C, T, B] -> [C, T, B]; masks are F16 [T, T] (null: no masking).  rows > 0: only the
    // first `rows` positions are wanted (a pooled stack reads position 0), so the last layer
    // computes those alone (Qwen3Layer::first_rows) and the result is [C, rows, B].
    ggml_tensor *layers_and_norm(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *window_mask,
                                 ggml_tensor *full_mask, int64_t rows = 0) const;
};

}  // namespace ace

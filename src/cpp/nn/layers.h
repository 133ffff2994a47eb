// layers.h: the simplest blocks every ACE-Step model is built from — linear, RMSNorm, SwiGLU,
// RoPE, embedding lookups.  Members are named like the PyTorch submodules so that each block
// loads its tensors from "<prefix><member>.weight".
//
// Activations are ggml tensors [C, T, B] (ne order: channels innermost, then time, then
// batch), i.e. PyTorch (B, T, C).
#pragma once

#include <string>
#include <vector>

#include "core/weights.h"

namespace ace {

struct Linear {
    ggml_tensor *weight = nullptr, *bias = nullptr;
    void load(Weights &w, const std::string &prefix, int64_t in, int64_t out, bool has_bias);
    // x: [in, ...] -> [out, ...]
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x) const;
};

struct RMSNorm {
    ggml_tensor *weight = nullptr;
    float eps = 1e-6f;
    void load(Weights &w, const std::string &name, int64_t dim, float eps);
    // normalises ne[0]: x: [dim, ...] -> [dim, ...]
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x) const;
};

struct SwiGLU {
    Linear gate_proj, up_proj, down_proj;
    void load(Weights &w, const std::string &prefix, int64_t hidden, int64_t intermediate);
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x) const;  // [C, ...] -> [C, ...]
};

// Rotate-half (NEOX) RoPE over head_dim.  x: [head_dim, n_head, T, B], pos: I32 [T].
ggml_tensor *rope_neox(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, float theta);

// InputError naming `what` unless ids is non-empty and every id indexes a table of vocab rows.
void check_token_ids(const std::vector<int32_t> &ids, int64_t vocab, const char *what);

// Positions 0..n-1.
std::vector<int32_t> iota(int64_t n);

}  // namespace ace

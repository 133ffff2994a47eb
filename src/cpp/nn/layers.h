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

// Adapters applied at run time (unmerged) to one Linear:
//   y = rows ⊙ (W x) + Σ_k scale_k · rows_k ⊙ Δ_k(x) + b
// with Δ_k a LoRA, B (A x), or a LoKr, (w1 ⊗ w2) x evaluated as w1 · X · w2ᵀ over x reshaped
// to [in1, in2] (never materialised).  rows/rows_k: optional per-output factors (DoRA), F32 [out].
struct AdapterBranch {
    ggml_tensor *a = nullptr, *b = nullptr;    // LoRA: A [r, in], B [out, r] (PyTorch order)
    ggml_tensor *w1 = nullptr, *w2 = nullptr;  // LoKr: w1 [out1, in1], w2 [out2, in2]
    ggml_tensor *rows = nullptr;
    float scale = 1.0f;
};
struct LinearAdapter {
    ggml_tensor *rows = nullptr;
    std::vector<AdapterBranch> branches;
};

struct Linear {
    ggml_tensor *weight = nullptr, *bias = nullptr;
    ggml_tensor *packed = nullptr;           // the weight in int8 (nn/int8_matmul.h), used in its place when set
    std::string name;                        // the weight's tensor name (set by load)
    const LinearAdapter *adapter = nullptr;  // run-time adapters, owned by the model
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
    void linears(std::vector<Linear *> &out) { out.insert(out.end(), {&gate_proj, &up_proj, &down_proj}); }
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

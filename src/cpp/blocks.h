// blocks.h: the transformer pieces every ACE-Step model is built from — linear, RMSNorm,
// RoPE, grouped-query attention with per-head q/k norm, SwiGLU, the Qwen3 decoder layer —
// and the attention masks.  Members are named like the PyTorch submodules so that each
// block loads its tensors from "<prefix><member>.weight".
//
// Activations are ggml tensors [C, T, B] (ne order: channels innermost, then time, then
// batch), i.e. PyTorch (B, T, C).  Per-head tensors are [head_dim, n_head, T, B] before
// attention and [head_dim, T, n_head, B] inside it.
#pragma once

#include <string>
#include <vector>

#include "core.h"

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

// Rotate-half (NEOX) RoPE over head_dim.  x: [head_dim, n_head, T, B], pos: I32 [T].
ggml_tensor *rope_neox(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, float theta);

// Scaled-dot-product attention with GQA broadcast (query head h reads kv head h / (H / Hkv),
// as PyTorch's repeat_interleave does).
// q: [D, Tq, H, B], k and v: [D, Tk, Hkv, B], mask: F16 [Tk, Tq] additive (0 / -inf) or null.
// Returns [D * H, Tq, B].  K and V may be views into a cache: only their strides matter.
ggml_tensor *attention(ggml_context *ctx, ggml_tensor *q, ggml_tensor *k, ggml_tensor *v, ggml_tensor *mask,
                       float scale);

// Whether attention() uses ggml_flash_attn_ext (default) or mul_mat + soft_max_ext.
// ACESTEP_GGML_ATTN=matmul selects the latter, for measurements.
bool use_flash_attention();

struct Dims {
    int64_t hidden = 0, n_head = 0, n_kv_head = 0, head_dim = 0, intermediate = 0;
    float eps = 1e-6f, rope_theta = 1e6f;
};

// Qwen3-style attention: q/k/v/o projections, RMSNorm per head on q and k.  Serves as
// self-attention (operator(), RoPE at pos), cross-attention (query(x, null), key/value of the
// encoder states with pos = null, attend(..., null mask)) and cached decoding (key/value of
// the new tokens copied into a cache, attend() on views of the cache with a Causal mask).
struct Attention {
    Linear q_proj, k_proj, v_proj, o_proj;
    RMSNorm q_norm, k_norm;
    int64_t n_head = 0, n_kv_head = 0, head_dim = 0;
    float rope_theta = 1e6f;

    void load(Weights &w, const std::string &prefix, const Dims &d, bool has_bias = false);
    // x: [C, T, B] -> q: [D, H, T, B] (normed, roped when pos is given)
    ggml_tensor *query(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos) const;
    // src: [C, Tk, B] -> k, v: [D, Hkv, Tk, B] (k normed, roped when pos is given).  For
    // cross-attention pass the encoder states and pos = null; for a KV cache copy these
    // into the cache and pass views of it to attend().
    ggml_tensor *key(ggml_context *ctx, ggml_tensor *src, ggml_tensor *pos) const;
    ggml_tensor *value(ggml_context *ctx, ggml_tensor *src) const;
    // q: [D, H, Tq, B], k/v: [D, Hkv, Tk, B] -> o_proj(attention): [C, Tq, B]
    ggml_tensor *attend(ggml_context *ctx, ggml_tensor *q, ggml_tensor *k, ggml_tensor *v, ggml_tensor *mask) const;
    // Self-attention over x with RoPE at pos.
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask) const;
};

struct SwiGLU {
    Linear gate_proj, up_proj, down_proj;
    void load(Weights &w, const std::string &prefix, int64_t hidden, int64_t intermediate);
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x) const;  // [C, ...] -> [C, ...]
};

// Pre-norm decoder layer (Qwen3DecoderLayer, AceStepEncoderLayer).
struct Qwen3Layer {
    RMSNorm input_layernorm, post_attention_layernorm;
    Attention self_attn;
    SwiGLU mlp;
    void load(Weights &w, const std::string &prefix, const Dims &d);
    // x: [C, T, B] -> [C, T, B]
    ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask) const;
};

// Dims of a Qwen3 layer read from its tensors' shapes ("<prefix>self_attn.q_norm.weight", ...),
// with eps and RoPE theta supplied by the caller from the metadata.
Dims dims_from_layer(const GGUFFile &f, const std::string &prefix, float eps, float rope_theta);
// How many "<prefix>N.input_layernorm.weight" exist for N = 0, 1, ...
int count_layers(const GGUFFile &f, const std::string &prefix);

// ---------------------------------------------------------------------------
// Masks: additive F16 [Tk, Tq] (ne order) = PyTorch (Tq, Tk); 0 where query i may see key j.

enum class MaskKind { Full, Causal, Window };

// Causal: key j visible to query i when j <= i + (tk - tq) (queries are the newest tq of
// tk positions, as with a KV cache).  Window: |i - j| <= window (bidirectional); key_valid (size Tk, may be empty)
// masks padded keys.  A query row with no visible key is left unmasked (attends over its raw
// scores) rather than producing NaN; PyTorch's finite dtype-min mask makes such a row uniform.
// Either way the row belongs to a padded token.
std::vector<ggml_fp16_t> make_mask(int64_t tq, int64_t tk, MaskKind kind, int64_t window,
                                   const std::vector<uint8_t> &key_valid = {});

// Dims of a Qwen3 stack whose layers are "<layers_prefix>N.", with eps and RoPE theta from
// the standard keys under the file's architecture.
Dims qwen3_dims(const GGUFFile &f, const std::string &layers_prefix);
// A token-embedding table [vocab, hidden]; sets vocab from the file, checks the width.
ggml_tensor *load_embedding(Weights &w, const std::string &name, int64_t hidden, int64_t &vocab);

// A standard key under the file's architecture prefix ("<arch>.rope.freq_base").
float arch_f32(const GGUFFile &f, const std::string &key, float fallback);

// Positions 0..n-1.
std::vector<int32_t> iota(int64_t n);

}  // namespace ace

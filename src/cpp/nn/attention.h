// attention.h: grouped-query attention with per-head q/k norm (Qwen3) and its masks.
//
// Per-head tensors are [head_dim, n_head, T, B] (ne order) before attention and
// [head_dim, T, n_head, B] inside it.
#pragma once

#include <string>
#include <vector>

#include "core/hparams.h"
#include "nn/layers.h"

namespace ace {

// Scaled-dot-product attention with GQA broadcast (query head h reads kv head h / (H / Hkv),
// as PyTorch's repeat_interleave does): ggml_flash_attn_ext where `backend`'s device runs it for
// these operands (always on the CPU), else mul_mat + soft_max_ext, so that every node stays on
// the device; ACESTEP_GGML_ATTN=flash|matmul forces one form.
// q: [D, Tq, H, B], k and v: [D, Tk, Hkv, B], mask: F16 [Tk, Tq] additive (0 / -inf) or null.
// Returns [D * H, Tq, B].  K and V may be views into a cache: only their strides matter.
ggml_tensor *attention(ggml_context *ctx, ggml_tensor *q, ggml_tensor *k, ggml_tensor *v, ggml_tensor *mask,
                       float scale, const Backend &backend);

// Qwen3-style attention: q/k/v/o projections, RMSNorm per head on q and k.  Serves as
// self-attention (operator(), RoPE at pos), cross-attention (query(x, null), key/value of the
// encoder states with pos = null, attend(..., null mask)) and cached decoding (key/value of
// the new tokens copied into a cache, attend() on views of the cache with a Causal mask).
struct Attention {
    Linear q_proj, k_proj, v_proj, o_proj;
    RMSNorm q_norm, k_norm;
    int64_t n_head = 0, n_kv_head = 0, head_dim = 0;
    float rope_theta = 1e6f;
    const Backend *backend = nullptr;  // the device the weights were loaded on (held by the model)

    void load(Weights &w, const std::string &prefix, const Dims &d, bool has_bias = false);
    void linears(std::vector<Linear *> &out) { out.insert(out.end(), {&q_proj, &k_proj, &v_proj, &o_proj}); }
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

}  // namespace ace

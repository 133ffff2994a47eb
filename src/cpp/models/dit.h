// dit.h: the ACE-Step 1.5 diffusion transformer (decoder.* of an acestep-dit GGUF), which
// predicts the flow velocity v(x_t, t | conditions) over 25 Hz latent frames.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/graph.h"
#include "core/hparams.h"
#include "core/weights.h"
#include "nn/attention.h"

namespace ace {

class DiT {
  public:
    // The file's decoder.*; FileError when it has none or its hyperparameters disagree.
    DiT(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend);
    ~DiT();

    const DiTHParams &hparams() const { return hp_; }
    size_t weight_bytes() const { return weights_->nbytes(); }

    // Per generation: the conditions go to the device once, with everything computed from them
    // alone (condition embedder, the cross-attention K/V of every layer).  All arrays row-major in
    // PyTorch order: enc [Be, S, encoder_hidden_size]; src_latents, chunk_mask
    // [Bs, T, audio_acoustic_hidden_dim].
    // Throws InputError on shapes or values the model cannot take.
    void set_conditions(const float *enc, int64_t Be, int64_t S, const float *src_latents, const float *chunk_mask,
                        int64_t Bs, int64_t T);
    // Per step: x_t [Bx, T, A] with Bx = 1 (shared by the batch) or B, t [B] -> v [B, T, A].
    // Batch row b reads conditions row b (row 0 when Bs = 1), so a CFG pair set once as Be = 2
    // runs as B = 2, or B = 1 (conditional only) outside the guidance interval.
    std::vector<float> step(const float *x_t, int64_t Bx, int64_t T, const float *t, int64_t B);
    // One-off: set_conditions, then step, all with batch B.
    std::vector<float> forward(const float *x_t, const float *src_latents, const float *chunk_mask, const float *t,
                               const float *enc, int64_t B, int64_t T, int64_t S);

  private:
    struct Layer {
        RMSNorm self_attn_norm, cross_attn_norm, mlp_norm;
        Attention self_attn, cross_attn;
        SwiGLU mlp;
        ggml_tensor *scale_shift_table = nullptr;  // [6, H]: AdaLN base, added to the timestep projection
    };
    struct TimestepEmbedding {
        Linear linear_1, linear_2, time_proj;
        // t: [B] (already scaled by 1000) -> temb [B, H]; *proj = [B, 6H]
        ggml_tensor *operator()(ggml_context *ctx, ggml_tensor *t, ggml_tensor **proj) const;
    };
    struct Conditions;
    struct Cached;

    void build(int64_t B, int64_t Bx);

    DiTHParams hp_;
    std::shared_ptr<Backend> backend_;
    std::unique_ptr<Weights> weights_;
    std::vector<Layer> layers_;
    TimestepEmbedding time_embed_, time_embed_r_;
    Linear proj_in_, condition_embedder_, proj_out_;  // the patch convs as matmuls over a patch's frames
    RMSNorm norm_out_;
    ggml_tensor *scale_shift_table_ = nullptr;  // [2, H]: output (shift, scale) base
    std::unique_ptr<Conditions> conds_;  // device tensors of the current generation
    std::unique_ptr<Cached> cached_;     // step graph + allocation for the last (B, Bx) over conds_
};

}  // namespace ace

// dit.h: the ACE-Step 1.5 diffusion transformer (decoder.* of an acestep-dit GGUF), which
// predicts the flow velocity v(x_t, t | conditions) over 25 Hz latent frames.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/graph.h"
#include "core/hparams.h"
#include "core/state.h"
#include "core/weights.h"
#include "nn/attention.h"
#include "nn/int8_matmul.h"

namespace ace {

// One run-time adapter branch of a Linear (see LinearAdapter): a LoRA (a = A [r, in], b = B
// [out, r]) or, with kron, a LoKr (a = w1, b = w2, ΔW = w1 ⊗ w2); matrices row-major F32.
struct AdapterMatrix {
    int64_t rows = 0, cols = 0;
    std::vector<float> data;
};
struct AdapterBranchSpec {
    bool kron = false;
    AdapterMatrix a, b;
    std::vector<float> rows;  // empty or [out]
    float scale = 1.0f;
};
struct AdapterSpec {
    std::string weight;       // the Linear's weight tensor, e.g. decoder.layers.0.self_attn.q_proj.weight
    std::vector<float> rows;  // empty or [out]: factor of W x (DoRA)
    std::vector<AdapterBranchSpec> branches;
};

class DiT {
  public:
    // The file's decoder.*; FileError when it has none or its hyperparameters disagree.
    DiT(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend);
    ~DiT();

    const DiTHParams &hparams() const { return hp_; }
    size_t weight_bytes() const { return weights_->nbytes() + (int8_ ? int8_->nbytes() : 0); }

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

    // Adapters.  The Linear weights they may target, with PyTorch shapes [out, in].
    std::vector<std::pair<std::string, std::vector<int64_t>>> adaptable() const;
    // A Linear weight as F32 (dequantized), and new values for it, encoded in its device type
    // (merged adapters); empty values restore the file's.  Conditions must be set again after.
    std::vector<float> weight(const std::string &name) const;
    void set_weight(const std::string &name, const std::vector<float> &values);
    // Run-time adapters, replacing the previous set (empty: none); InputError naming the weight
    // on a shape that does not fit.  Conditions must be set again after.
    void set_adapters(const std::vector<AdapterSpec> &specs);
    size_t adapter_bytes() const;

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
    void forget_conditions();  // after the weights or adapters changed
    std::vector<std::pair<std::string, Linear *>> linears();

    DiTHParams hp_;
    std::shared_ptr<Backend> backend_;
    std::unique_ptr<Weights> weights_;
    std::unique_ptr<Int8Linears> int8_;  // ACESTEP_GGML_INT8: the Linears' weights in int8
    std::vector<Layer> layers_;
    TimestepEmbedding time_embed_, time_embed_r_;
    Linear proj_in_, condition_embedder_, proj_out_;  // the patch convs as matmuls over a patch's frames
    RMSNorm norm_out_;
    ggml_tensor *scale_shift_table_ = nullptr;  // [2, H]: output (shift, scale) base
    std::unique_ptr<Conditions> conds_;  // device tensors of the current generation
    std::unique_ptr<Cached> cached_;     // step graph + allocation for the last (B, Bx) over conds_
    std::unique_ptr<DeviceTensors> adapter_tensors_;  // run-time adapters (dit_adapters.cpp)
    std::vector<LinearAdapter> adapters_;             // pointed to by the adapted Linears
};

}  // namespace ace

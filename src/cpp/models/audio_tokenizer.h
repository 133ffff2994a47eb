// audio_tokenizer.h: 25 Hz latents -> 5 Hz audio codes (the tokenizer.* tensors of an
// acestep-dit GGUF): a projection, an attention pooler over each window of `pool` frames, and
// the FSQ quantizer's projection and rounding.  The inverse of the Detokenizer.
#pragma once

#include <memory>
#include <vector>

#include "core/graph.h"
#include "core/hparams.h"
#include "nn/qwen3.h"

namespace ace {

class AudioTokenizer {
  public:
    AudioTokenizer(std::shared_ptr<GGUFFile> dit, std::shared_ptr<Backend> backend);
    // latents: [T, in_dim] -> codes [ceil(T / pool)] in [0, codebook_size).  A last window
    // shorter than `pool` is filled with the first frames of silence_latent, as the reference does.
    std::vector<int64_t> tokenize(const std::vector<float> &latents);
    const DiTHParams &hparams() const { return hp_; }
    int64_t codebook_size() const { return hp_.codebook_size; }
    int64_t pool() const { return hp_.pool_window_size; }
    int64_t in_dim() const { return hp_.audio_acoustic_hidden_dim; }

  private:
    // x: [in_dim, pool, N] -> FSQ inputs before rounding [levels, N]
    ggml_tensor *build(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *window_mask) const;

    DiTHParams hp_;
    Weights w_;
    Linear audio_acoustic_proj_, project_in_;
    EncoderStack pooler_;
    ggml_tensor *special_token_ = nullptr;  // [hidden]: the pooled slot put before each window
    std::vector<float> silence_head_;       // [pool - 1, in_dim]: padding of a short last window
    Runner runner_;
};

}  // namespace ace

// audio_tokenizer.h: 25 Hz latents -> 5 Hz audio codes (the tokenizer.* tensors of an
// acestep-dit GGUF): a projection, an attention pooler over each window of `pool` frames, and
// the FSQ quantizer's projection and rounding.  The inverse of the Detokenizer.
#pragma once

#include <memory>
#include <vector>

#include "models/detokenizer.h"

namespace ace {

class AudioTokenizer {
  public:
    AudioTokenizer(const std::string &dit_path, std::shared_ptr<Backend> backend);
    // latents: [T, in_dim] -> codes [ceil(T / pool)] in [0, codebook_size).  A last window
    // shorter than `pool` is filled with the first frames of silence_latent, as the reference does.
    std::vector<int64_t> tokenize(const std::vector<float> &latents);
    int64_t codebook_size() const { return codebook_; }
    int64_t pool() const { return pool_; }
    int64_t in_dim() const { return in_dim_; }

  private:
    // x: [in_dim, pool, N] -> FSQ inputs before rounding [levels, N]
    ggml_tensor *build(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *window_mask) const;

    std::shared_ptr<GGUFFile> file_;
    Weights w_;
    std::vector<int64_t> levels_;
    int64_t codebook_ = 1, hidden_ = 0, pool_ = 0, in_dim_ = 0;
    Linear audio_acoustic_proj_, project_in_;
    EncoderStack pooler_;
    ggml_tensor *special_token_ = nullptr;  // [hidden]: the pooled slot put before each window
    std::vector<float> silence_head_;       // [pool - 1, in_dim]: padding of a short last window
    Runner runner_;
};

}  // namespace ace

// detokenizer.h: 5 Hz audio codes -> 25 Hz latents (FSQ decode, project_out, detokenizer) of an
// acestep-dit file.
#pragma once

#include <memory>
#include <vector>

#include "core/graph.h"
#include "core/hparams.h"
#include "nn/int8_matmul.h"
#include "nn/qwen3.h"

namespace ace {

class Detokenizer {
  public:
    Detokenizer(std::shared_ptr<GGUFFile> dit, std::shared_ptr<Backend> backend);
    // codes: [N] integers in [0, codebook_size) -> [pool * N, out_dim].  A code is a number in
    // mixed radix whose digit i counts in units of prod(fsq_input_levels[:i]).
    std::vector<float> decode(const std::vector<int64_t> &codes);
    const DiTHParams &hparams() const { return hp_; }
    int64_t codebook_size() const { return hp_.codebook_size; }
    int64_t pool() const { return hp_.pool_window_size; }
    int64_t out_dim() const { return hp_.audio_acoustic_hidden_dim; }

  private:
    DiTHParams hp_;
    Weights w_;
    Linear project_out_, proj_out_;
    EncoderStack stack_;
    std::unique_ptr<Int8Linears> int8_;  // ACESTEP_GGML_INT8
    ggml_tensor *special_tokens_ = nullptr;
    Runner runner_;
};

}  // namespace ace

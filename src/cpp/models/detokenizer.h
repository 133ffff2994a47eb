// detokenizer.h: 5 Hz audio codes -> 25 Hz latents (FSQ decode, project_out, detokenizer).
#pragma once

#include <memory>
#include <vector>

#include "models/cond_encoder.h"

namespace ace {

// The FSQ levels of an acestep-dit file (acestep.fsq_input_levels, default 8·8·8·5·5·5), checked;
// a code is a number in mixed radix whose digit i counts in units of prod(levels[:i]).
std::vector<int64_t> fsq_levels(const GGUFFile &f);

class Detokenizer {
  public:
    Detokenizer(const std::string &dit_path, std::shared_ptr<Backend> backend);
    // codes: [N] integers in [0, codebook_size) -> [pool * N, out_dim]
    std::vector<float> decode(const std::vector<int64_t> &codes);
    int64_t codebook_size() const { return codebook_; }
    int64_t pool() const { return pool_; }
    int64_t out_dim() const { return out_dim_; }

  private:
    std::shared_ptr<GGUFFile> file_;
    Weights w_;
    std::vector<int64_t> levels_;
    int64_t codebook_ = 1, hidden_ = 0, pool_ = 0, out_dim_ = 0;
    Linear project_out_, proj_out_;
    EncoderStack stack_;
    ggml_tensor *special_tokens_ = nullptr;
    Runner runner_;
};

}  // namespace ace

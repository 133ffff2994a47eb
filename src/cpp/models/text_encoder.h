// text_encoder.h: the Qwen3 text encoder (acestep-text-enc): token ids -> last hidden state.
#pragma once

#include <memory>
#include <vector>

#include "core/graph.h"
#include "nn/qwen3.h"

namespace ace {

class TextEncoder {
  public:
    TextEncoder(const std::string &path, std::shared_ptr<Backend> backend);
    // ids: [T] -> [T, hidden], after the final norm.  Causal, as Qwen3Model is run by the pipeline.
    std::vector<float> encode(const std::vector<int32_t> &ids);
    // ids: [T] -> [T, hidden], the embedding table rows only (the lyric path).
    std::vector<float> embed(const std::vector<int32_t> &ids);
    int64_t hidden() const { return dims_.hidden; }
    int64_t vocab_size() const { return vocab_; }

  private:
    std::vector<float> run(const std::vector<int32_t> &ids, bool layers);

    std::shared_ptr<GGUFFile> file_;
    Weights w_;
    Dims dims_;
    int64_t vocab_ = 0;
    ggml_tensor *embed_tokens_ = nullptr;
    std::vector<Qwen3Layer> layers_;
    RMSNorm norm_;
    Runner runner_;
};

}  // namespace ace

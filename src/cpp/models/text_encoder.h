// text_encoder.h: the Qwen3 text encoder (acestep-text-enc): token ids -> last hidden state.
#pragma once

#include <memory>
#include <vector>

#include "core/graph.h"
#include "core/hparams.h"
#include "nn/int8_matmul.h"
#include "nn/qwen3.h"

namespace ace {

class TextEncoder {
  public:
    TextEncoder(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend);
    // ids: [T] -> [T, hidden], after the final norm.  Causal, as Qwen3Model is run by the pipeline.
    std::vector<float> encode(const std::vector<int32_t> &ids);
    // ids: [T] -> [T, hidden], the embedding table rows only (the lyric path).
    std::vector<float> embed(const std::vector<int32_t> &ids);
    const TextEncHParams &hparams() const { return hp_; }
    int64_t hidden() const { return hp_.hidden_size; }
    int64_t vocab_size() const { return hp_.vocab_size; }

  private:
    std::vector<float> run(const std::vector<int32_t> &ids, bool layers);

    TextEncHParams hp_;
    Weights w_;
    ggml_tensor *embed_tokens_ = nullptr;
    std::vector<Qwen3Layer> layers_;
    RMSNorm norm_;
    std::unique_ptr<Int8Linears> int8_;  // ACESTEP_GGML_INT8
    Runner runner_;
};

}  // namespace ace

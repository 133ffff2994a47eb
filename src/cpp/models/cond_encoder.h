// cond_encoder.h: the condition encoder of the acestep-dit file — text projector, lyric
// encoder, timbre encoder — and the packing of their outputs into the DiT's cross-attention
// sequence.
#pragma once

#include <memory>
#include <vector>

#include "core/graph.h"
#include "nn/qwen3.h"

namespace ace {

// Sliding window and eps/theta of an acestep-dit file, from its metadata.
struct DitAttnConfig {
    float eps = 1e-6f, theta = 1e6f;
    int64_t window = 128;
    explicit DitAttnConfig(const GGUFFile &f);
};

class ConditionEncoder {
  public:
    ConditionEncoder(const std::string &dit_path, const std::string &text_encoder_path,
                     std::shared_ptr<Backend> backend);

    struct Output {
        std::vector<float> states;  // [L, hidden], valid tokens first
        std::vector<uint8_t> mask;  // [L]
    };
    // text_hidden: [Tt, text_dim] with text_mask [Tt]; lyric_ids: [Tl] with lyric_mask [Tl];
    // refer: [Tr, timbre_dim] reference latent, or empty for the silence latent's first 750 frames.
    // Masks may be empty (all valid).
    Output encode(const std::vector<float> &text_hidden, const std::vector<uint8_t> &text_mask,
                  const std::vector<int32_t> &lyric_ids, const std::vector<uint8_t> &lyric_mask,
                  const std::vector<float> &refer);

    int64_t hidden() const { return hidden_; }
    int64_t text_dim() const { return text_dim_; }
    int64_t timbre_dim() const { return timbre_dim_; }
    int64_t vocab_size() const { return vocab_; }  // of the text encoder's embedding table
    const std::vector<float> &null_condition_emb() const { return null_; }  // [hidden]
    const std::vector<float> &silence_latent() const { return silence_; }  // [silence_frames, timbre_dim]
    int64_t silence_frames() const { return timbre_dim_ ? (int64_t)silence_.size() / timbre_dim_ : 0; }

    static constexpr int64_t kTimbreFrames = 750;  // 30 s at 25 Hz, the pipeline's timbre_fix_frame

  private:
    std::shared_ptr<GGUFFile> dit_, text_;
    Weights w_, text_w_;
    int64_t hidden_ = 0, text_dim_ = 0, timbre_dim_ = 0, vocab_ = 0;
    Linear text_projector_;
    EncoderStack lyric_, timbre_;
    ggml_tensor *embed_table_ = nullptr;  // the text encoder's embed_tokens
    std::vector<float> null_, silence_;
    Runner runner_;
};

}  // namespace ace

// cond_encoder.h: the condition encoder of the acestep-dit file — text projector, lyric
// encoder, timbre encoder — and the packing of their outputs into the DiT's cross-attention
// sequence.
#pragma once

#include <memory>
#include <vector>

#include "core/graph.h"
#include "core/hparams.h"
#include "nn/int8_matmul.h"
#include "nn/qwen3.h"

namespace ace {

class ConditionEncoder {
  public:
    // The DiT file's encoder.*, with the text encoder file's embedding table for the lyrics.
    ConditionEncoder(std::shared_ptr<GGUFFile> dit, std::shared_ptr<GGUFFile> text_encoder,
                     std::shared_ptr<Backend> backend);

    struct Output {
        std::vector<float> states;  // [L, hidden], valid tokens first
        std::vector<uint8_t> mask;  // [L]
    };
    // text_hidden: [Tt, text_dim] with text_mask [Tt]; lyric_ids: [Tl] with lyric_mask [Tl];
    // refer: [Tr, timbre_dim] reference latent, or empty for the silence latent's first
    // timbre_fix_frame frames (750: 30 s at 25 Hz).
    // Masks may be empty (all valid).
    Output encode(const std::vector<float> &text_hidden, const std::vector<uint8_t> &text_mask,
                  const std::vector<int32_t> &lyric_ids, const std::vector<uint8_t> &lyric_mask,
                  const std::vector<float> &refer);

    const DiTHParams &hparams() const { return hp_; }
    const TextEncHParams &text_hparams() const { return text_hp_; }
    int64_t hidden() const { return hp_.encoder_hidden_size; }
    int64_t text_dim() const { return hp_.text_hidden_dim; }
    int64_t timbre_dim() const { return hp_.timbre_hidden_dim; }
    int64_t vocab_size() const { return text_hp_.vocab_size; }  // of the text encoder's embedding table
    const std::vector<float> &null_condition_emb() const { return null_; }  // [hidden]
    const std::vector<float> &silence_latent() const { return silence_; }  // [silence_frames, timbre_dim]
    int64_t silence_frames() const { return hp_.silence_frames; }

  private:
    DiTHParams hp_;
    TextEncHParams text_hp_;
    Weights w_, text_w_;
    Linear text_projector_;
    EncoderStack lyric_, timbre_;
    std::unique_ptr<Int8Linears> int8_;  // ACESTEP_GGML_INT8
    ggml_tensor *embed_table_ = nullptr;  // the text encoder's embed_tokens
    ggml_tensor *timbre_cls_ = nullptr;   // XL: encoder.timbre_encoder.special_token [hidden]
    std::vector<float> null_, silence_;
    Runner runner_;
};

}  // namespace ace

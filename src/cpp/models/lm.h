// lm.h: the 5 Hz LM (acestep-lm), a Qwen3 causal LM with a KV cache holding several
// sequences (cond and uncond for classifier-free guidance), each with its own length.
#pragma once

#include <memory>
#include <vector>

#include "core/graph.h"
#include "core/hparams.h"
#include "core/state.h"
#include "nn/int8_matmul.h"
#include "nn/qwen3.h"

namespace ace {

class LM {
  public:
    LM(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend);
    ~LM();
    LM(const LM &) = delete;
    LM &operator=(const LM &) = delete;

    // Drops all sequences and allocates a cache of n_seq sequences of n_ctx positions each
    // (kv_type F16 or F32), once: decoding never reallocates.
    void reset(int n_seq, int64_t n_ctx, ggml_type kv_type);
    // Appends ids to sequence `seq`; returns the logits of its last position: [vocab].
    std::vector<float> prefill(int seq, const std::vector<int32_t> &ids);
    // One token per sequence (tokens.size() == n_seq); returns the next logits of the
    // vocabulary rows [lo, hi) (hi < 0: to the end): [n_seq, hi - lo].
    std::vector<float> decode(const std::vector<int32_t> &tokens, int64_t lo = 0, int64_t hi = -1);
    // The same ids appended to every sequence in one pass (tokens an FSM forces, fed together
    // rather than one decode each); returns [n_seq, hi - lo] logits after the last of them.
    std::vector<float> extend(const std::vector<int32_t> &ids, int64_t lo = 0, int64_t hi = -1);

    int64_t length(int seq) const;
    int n_seq() const { return (int)len_.size(); }
    int64_t n_ctx() const { return n_ctx_; }
    const LMHParams &hparams() const { return hp_; }
    int64_t vocab_size() const { return hp_.vocab_size; }
    bool tied() const { return lm_head_ == embed_tokens_; }

  private:
    struct Step;
    // Runs `ids` through the layers: sequences seq0 .. seq0 + ns - 1 take ids.size() / ns
    // consecutive ids each, at positions len_[s] onwards.
    // Returns logits (vocabulary rows [lo, hi)) of the last token of each sequence: [ns, hi - lo].
    std::vector<float> forward(const std::vector<int32_t> &ids, int seq0, int ns, int64_t lo, int64_t hi);
    // The graph of a forward pass of t tokens for each of ns sequences from seq0, attending over
    // the first n_kv cache positions, with head rows [lo, hi).
    std::unique_ptr<Step> build(int64_t t, int seq0, int ns, int64_t n_kv, int64_t lo, int64_t hi);
    // Zeroes cache positions [zeroed_, n_kv) of every sequence: attention reads the padded
    // length n_kv under a mask, and a masked product is only zero when the key and value are finite.
    void zero_kv_to(int64_t n_kv);

    LMHParams hp_;
    Dims dims_;  // hp_.dims()
    Weights w_;
    ggml_tensor *embed_tokens_ = nullptr, *lm_head_ = nullptr;
    std::vector<Qwen3Layer> layers_;
    std::unique_ptr<Int8Linears> int8_;  // ACESTEP_GGML_INT8
    RMSNorm norm_;
    Runner runner_;

    // k_[l], v_[l]: [D, Hkv, n_ctx, n_seq] (ne order), in cache_
    std::unique_ptr<DeviceTensors> cache_;
    std::vector<ggml_tensor *> k_, v_;
    std::vector<int64_t> len_;
    int64_t n_ctx_ = 0;
    int64_t zeroed_ = 0;  // positions [0, zeroed_) of every sequence are written or zeroed
    // The last forward graph with its allocation, kept while calls have its shape (every decode
    // step of a phase): a step then only uploads its token, positions and mask.
    std::unique_ptr<Step> step_;
};

}  // namespace ace

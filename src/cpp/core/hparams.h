// hparams.h: one typed hyperparameter reader per model-file kind (the DiT file, the text encoder,
// the VAE, the 5 Hz LM).  Every key of a file is read in hparams.cpp and nowhere else, by one
// policy per key: the GGUF metadata key, else the same value in the embedded config.json
// (`acestep.config_json`), else the key's fallback (a default, a value derived from the tensors'
// shapes or from other keys, or none).  The numbers are then checked for sanity (positive,
// bounded, head counts dividing, finite positive epsilons and RoPE bases) and against the
// tensors' shapes, so that a file that contradicts itself is a FileError naming the key and the
// tensor before any weight is loaded or graph built.
//
// Field names are config.json's, so that Python sees the names the checkpoints use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/gguf_file.h"

namespace ace {

// ---------------------------------------------------------------------------
// The key table: what each kind of file may state, and where.

enum class KeyType { U32, F32, Bool, IntArray, StrList };

enum class Fallback {
    Default,  // `value` (JSON) when the file states neither key
    Derived,  // from the tensors' shapes or from other keys (`value` says how) when neither is stated
    Absent,   // stays unset
};

struct HParamKey {
    const char *gguf;    // metadata key; under the architecture ("<arch>.<gguf>") when under_arch;
                         // nullptr when only config.json holds the value
    bool under_arch;
    const char *config;  // config.json key, or nullptr
    KeyType type;
    Fallback fallback;
    const char *value;   // Default: the value as JSON; Derived: how it is derived
};

struct KeyTable {
    const char *architecture;
    const HParamKey *const *keys;
    size_t size;
    const HParamKey *const *begin() const { return keys; }
    const HParamKey *const *end() const { return keys + size; }
    // The key's full GGUF name ("acestep-dit.embedding_length"), or "" when it has none.
    std::string gguf_key(const HParamKey &k) const;
};

// The table of a file kind ("acestep-dit", "acestep-text-enc", "acestep-lm", "acestep-vae"); an
// unknown kind is an InputError.
const KeyTable &hparam_keys(const std::string &architecture);
const char *key_type_name(KeyType type);  // "u32", "f32", "bool", "int_array", "str_list"

// ---------------------------------------------------------------------------
// The kinds.

// The sizes of one stack of Qwen3-style layers (attention with per-head q/k norm, SwiGLU MLP).
struct Dims {
    int64_t hidden = 0, n_head = 0, n_kv_head = 0, head_dim = 0, intermediate = 0;
    float eps = 1e-6f, rope_theta = 1e6f;
};

// An acestep-dit file: the DiT (decoder.*), its condition encoder (encoder.*), the audio tokenizer
// (tokenizer.*) and detokenizer (detokenizer.*), null_condition_emb and silence_latent.  A file
// may hold only some of the parts (has_*); the sizes of an absent part are 0 unless stated.
struct DiTHParams {
    bool is_turbo = false;
    std::optional<double> shift;  // the sampler's timestep shift, where config.json names one
    bool has_decoder = false, has_encoder = false, has_tokenizer = false, has_detokenizer = false;

    // The diffusion transformer.
    int64_t hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
    int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;  // head_dim: every stack's
    int64_t in_channels = 0;                // src_latents ‖ chunk_mask ‖ x_t per frame: 3 x latent channels
    int64_t audio_acoustic_hidden_dim = 0;  // latent channels (64)
    int64_t patch_size = 0;                 // frames per token
    int64_t sliding_window = 0;             // every stack's sliding layers see |i - j| <= this
    // Layer i of every stack (decoder, lyric, timbre, pooler, detokenizer) is "sliding_attention"
    // or "full_attention"; as long as the longest stack.
    std::vector<std::string> layer_types;
    double rms_norm_eps = 0, rope_theta = 0;

    // The condition encoder: as wide as the DiT (2B), or narrower (XL: 2048 under a 2560 DiT,
    // decoder.condition_embedder maps it to the DiT's width).  The tokenizer and detokenizer
    // share its heads and MLP width.
    int64_t encoder_hidden_size = 0, encoder_intermediate_size = 0;
    int64_t encoder_num_attention_heads = 0, encoder_num_key_value_heads = 0;
    int64_t text_hidden_dim = 0, timbre_hidden_dim = 0;
    int64_t num_lyric_encoder_hidden_layers = 0, num_timbre_encoder_hidden_layers = 0;
    int64_t timbre_fix_frame = 0;  // silence-latent frames that stand for a missing reference
    // XL's timbre encoder prepends encoder.timbre_encoder.special_token (a learned CLS token) and
    // outputs its position; 2B outputs the first frame's.  Set when the file states encoder_hidden_size.
    bool timbre_cls = false;
    int64_t silence_frames = 0;    // rows of silence_latent (0: none)

    // The audio tokenizer (25 Hz latents -> 5 Hz codes) and detokenizer; their stacks are fsq_dim
    // wide with the condition encoder's heads and MLP width.
    std::vector<int64_t> fsq_input_levels;
    int64_t codebook_size = 0;  // the product of the levels
    int64_t fsq_dim = 0, pool_window_size = 0;
    int64_t num_attention_pooler_hidden_layers = 0;  // the tokenizer's pooler
    int64_t num_detokenizer_hidden_layers = 0;       // the detokenizer's (num_attention_pooler_hidden_layers too)

    bool sliding(size_t layer) const { return layer < layer_types.size() && layer_types[layer] == "sliding_attention"; }
    std::vector<bool> sliding_layers(int64_t n) const;
    Dims decoder_dims() const;
    Dims encoder_dims() const;
    Dims tokenizer_dims() const;  // the pooler's and the detokenizer's
};

// An acestep-text-enc file: a Qwen3 encoder (Qwen3-Embedding).  Also the base of the LM's.
struct TextEncHParams {
    int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
    int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
    std::optional<int64_t> max_position_embeddings;
    double rms_norm_eps = 0, rope_theta = 0;
    Dims dims() const;
};

// An acestep-lm file: a Qwen3 causal LM.
struct LMHParams : TextEncHParams {
    bool tie_word_embeddings = false;  // the head is the embedding table (no lm_head.weight)
};

// An acestep-vae file: AutoencoderOobleck.
struct VAEHParams {
    int64_t encoder_hidden_size = 0;  // the encoder's width; its output is mean ‖ scale
    std::vector<int64_t> downsampling_ratios;  // the encoder's; the decoder runs them reversed
    std::vector<int64_t> channel_multiples;
    int64_t decoder_channels = 0;
    int64_t decoder_input_channels = 0;  // latent channels
    int64_t audio_channels = 0, sampling_rate = 0;
    int64_t hop_length = 0;  // audio samples per latent frame: the product of the ratios
    bool has_encoder = false;
};

// The readers: each checks the architecture, reads every key by the table's policy and checks the
// values against each other and the tensors; FileError naming the file, the key and the tensor.
DiTHParams read_dit_hparams(const GGUFFile &f);
TextEncHParams read_text_enc_hparams(const GGUFFile &f);
LMHParams read_lm_hparams(const GGUFFile &f);
VAEHParams read_vae_hparams(const GGUFFile &f);

}  // namespace ace

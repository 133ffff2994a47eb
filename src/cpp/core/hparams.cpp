// hparams.cpp: the key table, the one reader per file kind, and the checks of what a file states
// against itself and its tensors.
//
// Policy, per key: the GGUF metadata key (what our converter and acestep.cpp's write), else the
// same key in config.json (files whose converter wrote only the config), else the key's fallback.
// A size that the tensors also show falls back to the tensors ("Derived"), so that files which
// state less (acestep.cpp writes acestep.is_turbo and acestep.tie_word_embeddings only when true,
// and no pool_window_size or layer_types key at all) keep loading; where a file states a size,
// the tensors must agree with it.
#include "core/hparams.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "core/error.h"
#include "core/format.h"
#include "core/json.h"

namespace ace {

namespace {

using K = HParamKey;
constexpr KeyType U32 = KeyType::U32, F32 = KeyType::F32, Bool = KeyType::Bool, IntArray = KeyType::IntArray,
                  StrList = KeyType::StrList;
constexpr Fallback Default = Fallback::Default, Derived = Fallback::Derived, Absent = Fallback::Absent;

// The standard Qwen3 keys, under each file's architecture (llama.cpp's names).
constexpr K block_count{"block_count", true, "num_hidden_layers", U32, Derived, "the layers present"};
constexpr K embedding_length{"embedding_length", true, "hidden_size", U32, Derived, "the tensors' shapes"};
constexpr K feed_forward_length{"feed_forward_length", true, "intermediate_size", U32, Derived,
                                "the tensors' shapes"};
constexpr K head_count{"attention.head_count", true, "num_attention_heads", U32, Derived, "the tensors' shapes"};
constexpr K head_count_kv{"attention.head_count_kv", true, "num_key_value_heads", U32, Derived,
                          "the tensors' shapes"};
constexpr K key_length{"attention.key_length", true, "head_dim", U32, Derived, "the width of q_norm"};
constexpr K rms_eps{"attention.layer_norm_rms_epsilon", true, "rms_norm_eps", F32, Default, "1e-6"};
constexpr K rope_freq_base{"rope.freq_base", true, "rope_theta", F32, Default, "1000000.0"};
constexpr K vocab_size{"vocab_size", true, "vocab_size", U32, Derived, "the rows of the embedding table"};
constexpr K context_length{"context_length", true, "max_position_embeddings", U32, Absent, nullptr};

// The DiT file's own.
constexpr K is_turbo{"acestep.is_turbo", false, "is_turbo", Bool, Default, "false"};
constexpr K shift{nullptr, false, "shift", F32, Absent, nullptr};
constexpr K in_channels{"acestep.in_channels", false, "in_channels", U32, Derived, "decoder.proj_in.1.weight"};
constexpr K audio_acoustic_hidden_dim{"acestep.audio_acoustic_hidden_dim", false, "audio_acoustic_hidden_dim", U32,
                                      Derived, "decoder.proj_out.1.weight or the tokenizer's tensors"};
constexpr K patch_size{"acestep.patch_size", false, "patch_size", U32, Derived, "decoder.proj_in.1.weight"};
constexpr K sliding_window{"acestep.sliding_window", false, "sliding_window", U32, Default, "128"};
constexpr K layer_types{nullptr, false, "layer_types", StrList, Derived,
                        "sliding_attention on even layers, full_attention on odd ones"};
constexpr K encoder_hidden_size{"acestep.encoder_hidden_size", false, "encoder_hidden_size", U32, Derived,
                                "the condition encoder's tensors, else hidden_size"};
constexpr K encoder_intermediate_size{"acestep.encoder_intermediate_size", false, "encoder_intermediate_size", U32,
                                      Derived, "the condition encoder's tensors, else intermediate_size"};
constexpr K encoder_num_attention_heads{"acestep.encoder_num_attention_heads", false, "encoder_num_attention_heads",
                                        U32, Derived, "the condition encoder's tensors, else num_attention_heads"};
constexpr K encoder_num_key_value_heads{"acestep.encoder_num_key_value_heads", false, "encoder_num_key_value_heads",
                                        U32, Derived, "the condition encoder's tensors, else num_key_value_heads"};
constexpr K text_hidden_dim{"acestep.text_hidden_dim", false, "text_hidden_dim", U32, Derived,
                            "encoder.text_projector.weight"};
constexpr K timbre_hidden_dim{"acestep.timbre_hidden_dim", false, "timbre_hidden_dim", U32, Derived,
                              "encoder.timbre_encoder.embed_tokens.weight"};
constexpr K num_lyric_layers{"acestep.num_lyric_encoder_hidden_layers", false, "num_lyric_encoder_hidden_layers",
                             U32, Derived, "the layers present"};
constexpr K num_timbre_layers{"acestep.num_timbre_encoder_hidden_layers", false, "num_timbre_encoder_hidden_layers",
                              U32, Derived, "the layers present"};
constexpr K timbre_fix_frame{nullptr, false, "timbre_fix_frame", U32, Default, "750"};
constexpr K fsq_input_levels{"acestep.fsq_input_levels", false, "fsq_input_levels", IntArray, Default,
                             "[8, 8, 8, 5, 5, 5]"};
constexpr K fsq_input_num_quantizers{nullptr, false, "fsq_input_num_quantizers", U32, Default, "1"};
constexpr K fsq_dim{"acestep.fsq_dim", false, "fsq_dim", U32, Derived, "tokenizer.quantizer.project_out.weight"};
constexpr K pool_window_size{nullptr, false, "pool_window_size", U32, Derived,
                             "the rows of detokenizer.special_tokens, else 5"};
constexpr K num_pooler_layers{"acestep.num_attention_pooler_hidden_layers", false,
                              "num_attention_pooler_hidden_layers", U32, Derived, "the layers present"};

// The LM's.
constexpr K tie_word_embeddings{"acestep.tie_word_embeddings", false, "tie_word_embeddings", Bool, Derived,
                                "true when the file has no lm_head.weight"};

// The VAE's: config.json alone holds them; the defaults are ACE-Step 1.5's VAE.
constexpr K vae_encoder_hidden_size{nullptr, false, "encoder_hidden_size", U32, Default, "128"};
constexpr K downsampling_ratios{nullptr, false, "downsampling_ratios", IntArray, Default, "[2, 4, 4, 6, 10]"};
constexpr K channel_multiples{nullptr, false, "channel_multiples", IntArray, Default, "[1, 2, 4, 8, 16]"};
constexpr K decoder_channels{nullptr, false, "decoder_channels", U32, Default, "128"};
constexpr K decoder_input_channels{nullptr, false, "decoder_input_channels", U32, Default, "64"};
constexpr K audio_channels{nullptr, false, "audio_channels", U32, Default, "2"};
constexpr K sampling_rate{nullptr, false, "sampling_rate", U32, Default, "48000"};

constexpr const K *kDiTKeys[] = {
    &is_turbo, &shift, &block_count, &embedding_length, &feed_forward_length, &head_count, &head_count_kv,
    &key_length, &rms_eps, &rope_freq_base, &in_channels, &audio_acoustic_hidden_dim, &patch_size,
    &sliding_window, &layer_types, &encoder_hidden_size, &encoder_intermediate_size, &encoder_num_attention_heads,
    &encoder_num_key_value_heads, &text_hidden_dim, &timbre_hidden_dim, &num_lyric_layers, &num_timbre_layers,
    &timbre_fix_frame, &fsq_input_levels, &fsq_input_num_quantizers, &fsq_dim, &pool_window_size,
    &num_pooler_layers};
constexpr const K *kTextEncKeys[] = {&vocab_size, &embedding_length, &feed_forward_length, &block_count,
                                     &head_count, &head_count_kv, &key_length, &context_length, &rms_eps,
                                     &rope_freq_base};
constexpr const K *kLMKeys[] = {&vocab_size, &embedding_length, &feed_forward_length, &block_count, &head_count,
                                &head_count_kv, &key_length, &context_length, &rms_eps, &rope_freq_base,
                                &tie_word_embeddings};
constexpr const K *kVAEKeys[] = {&vae_encoder_hidden_size, &downsampling_ratios, &channel_multiples,
                                 &decoder_channels, &decoder_input_channels, &audio_channels, &sampling_rate};

constexpr KeyTable kDiT{"acestep-dit", kDiTKeys, std::size(kDiTKeys)};
constexpr KeyTable kTextEnc{"acestep-text-enc", kTextEncKeys, std::size(kTextEncKeys)};
constexpr KeyTable kLM{"acestep-lm", kLMKeys, std::size(kLMKeys)};
constexpr KeyTable kVAE{"acestep-vae", kVAEKeys, std::size(kVAEKeys)};

// Sizes beyond these are not a model of this family but a corrupt or hostile file.
constexpr int64_t kMaxWidth = 1 << 18, kMaxHeads = 1024, kMaxHeadDim = 1024, kMaxLayers = 1024;
constexpr int64_t kMaxVocab = 1 << 24, kMaxWindow = 1 << 24, kMaxPatch = 64, kMaxPool = 64;
constexpr int64_t kMaxVAEChannels = 1 << 14;  // before the channel multiples

// ---------------------------------------------------------------------------
// What one file states.

class Source {
  public:
    Source(const GGUFFile &f, const KeyTable &table) : f_(f), table_(table) {
        f.expect_architecture(table.architecture);
        const std::string js = f.has_key("acestep.config_json") ? f.get_str("acestep.config_json") : "";
        if (!js.empty()) config_ = Config(js, f.path() + ": acestep.config_json");
    }

    const GGUFFile &file() const { return f_; }
    bool stated(const K &k) const { return in_gguf(k) || in_config(k); }

    // How messages name k: the key its value came from; else the key it would come from.
    std::string name(const K &k) const {
        if (in_gguf(k) || (k.gguf && !in_config(k))) return table_.gguf_key(k);
        return fmt("config.json's %s", k.config);
    }

    // The stated value, else the default; `derived` for a Derived key the file does not state.
    int64_t integer(const K &k, int64_t derived = 0) const {
        if (in_gguf(k)) return f_.get_u32(table_.gguf_key(k));
        if (in_config(k)) return config_.get_int(k.config, 0);
        return k.fallback == Default ? fallback(k).get_int("v", 0) : derived;
    }
    double number(const K &k) const {
        if (in_gguf(k)) return f_.get_f32(table_.gguf_key(k));
        if (in_config(k)) return config_.get_float(k.config, 0);
        return fallback(k).get_float("v", 0);
    }
    std::optional<double> stated_number(const K &k) const {
        return stated(k) ? std::optional<double>(number(k)) : std::nullopt;
    }
    std::optional<int64_t> stated_integer(const K &k) const {
        return stated(k) ? std::optional<int64_t>(integer(k)) : std::nullopt;
    }
    bool boolean(const K &k, bool derived = false) const {
        if (in_gguf(k)) return f_.get_bool(table_.gguf_key(k));
        if (in_config(k)) return config_.get_bool(k.config, false);
        return k.fallback == Default ? fallback(k).get_bool("v", false) : derived;
    }
    std::vector<int64_t> integers(const K &k) const {
        if (in_gguf(k)) return f_.get_int_array(table_.gguf_key(k));
        if (in_config(k)) return config_.get_int_list(k.config, {});
        return fallback(k).get_int_list("v", {});
    }
    std::vector<std::string> strings(const K &k) const {
        return in_config(k) ? config_.get_str_list(k.config, {}) : std::vector<std::string>{};
    }

    [[noreturn]] void fail(const std::string &message) const {
        throw FileError(fmt("%s: %s", f_.path().c_str(), message.c_str()));
    }

  private:
    bool in_gguf(const K &k) const { return k.gguf && f_.has_key(table_.gguf_key(k)); }
    bool in_config(const K &k) const { return k.config && config_.has(k.config); }
    Config fallback(const K &k) const { return Config(fmt("{\"v\": %s}", k.value), "hparams table"); }

    const GGUFFile &f_;
    const KeyTable &table_;
    Config config_;
};

// ---------------------------------------------------------------------------
// Checks

// A dimension a tensor must have, and the keys that say so.
struct Want {
    int64_t value;
    std::string why;
};

class Checker {
  public:
    explicit Checker(const Source &s) : s_(s), f_(s.file()) {}

    Want of(const K &k, int64_t v) const { return {v, s_.name(k)}; }
    Want times(const K &a, int64_t va, const K &b, int64_t vb) const {
        return {va * vb, s_.name(a) + " x " + s_.name(b)};
    }

    // 1 <= v <= max.
    void size(const K &k, int64_t v, int64_t max) const {
        if (v < 1 || v > max)
            s_.fail(fmt("%s = %lld is outside 1..%lld", s_.name(k).c_str(), (long long)v, (long long)max));
    }
    void at_most(const K &k, int64_t v, int64_t max) const {
        if (v < 0 || v > max)
            s_.fail(fmt("%s = %lld is outside 0..%lld", s_.name(k).c_str(), (long long)v, (long long)max));
    }
    // A finite positive real below max (NaN epsilons abort or hang ggml's norms).
    void real(const K &k, double v, double max) const {
        if (!std::isfinite(v) || v <= 0 || v >= max)
            s_.fail(fmt("%s = %g must be finite, positive and below %g", s_.name(k).c_str(), v, max));
    }
    // A rotary base: real models use 1e4 .. 1e6; below 1 the frequencies theta^(-2i/d) overflow
    // to inf and the attention to NaN (found by tests/fuzz: 1e-45 gave NaN logits).
    void rope_base(const K &k, double v) const {
        real(k, v, 1e12);
        if (v < 1) s_.fail(fmt("%s = %g must be at least 1", s_.name(k).c_str(), v));
    }
    void heads(const K &heads, int64_t h, const K &kv, int64_t hkv) const {
        if (hkv >= 1 && h % hkv != 0)
            s_.fail(fmt("%s = %lld is not a multiple of %s = %lld", s_.name(heads).c_str(), (long long)h,
                        s_.name(kv).c_str(), (long long)hkv));
    }

    // The tensor, where the file has it, must have the shape `want` (PyTorch order); unit axes
    // are not significant, as ggml drops trailing ones.
    void shape(const std::string &tensor, const std::vector<Want> &want) const {
        const TensorInfo *t = f_.find(tensor);
        if (!t) return;
        auto squeeze = [](const std::vector<int64_t> &s) {
            std::vector<int64_t> out;
            for (auto d : s)
                if (d != 1) out.push_back(d);
            return out;
        };
        std::vector<int64_t> expected;
        std::string why;
        for (const Want &w : want) {
            expected.push_back(w.value);
            why += fmt("%s%lld (%s)", why.empty() ? "" : ", ", (long long)w.value, w.why.c_str());
        }
        if (squeeze(t->torch_shape()) != squeeze(expected))
            s_.fail(fmt("tensor '%s' has shape %s, but the hyperparameters make it [%s]", tensor.c_str(),
                        shape_str(t->torch_shape()).c_str(), why.c_str()));
    }

    // The layers "<prefix>0." .. "<prefix>(n-1)." exist and no "<prefix>n." does (`layers` says n).
    void layer_count(const std::string &prefix, const K &layers, int64_t n) const {
        for (int64_t i = 0; i <= n; i++) {
            const std::string q = prefix + std::to_string(i) + ".self_attn.q_proj.weight";
            if ((f_.find(q) != nullptr) != (i < n))
                s_.fail(fmt("%s = %lld, but tensor '%s' is %s", s_.name(layers).c_str(), (long long)n, q.c_str(),
                            i < n ? "missing" : "present"));
        }
    }

    // Every layer of a stack of Qwen3-style layers under `prefix` ("decoder.layers."): attention
    // (and cross-attention) projections, q/k norms, the MLP and the `norms`, against d.
    struct StackKeys {
        const K &hidden, &intermediate, &heads, &kv_heads, &layers;
    };
    void stack(const std::string &prefix, const Dims &d, int64_t n, const StackKeys &k,
               const std::vector<const char *> &norms, bool cross_attention = false) const {
        layer_count(prefix, k.layers, n);
        const Want hidden = of(k.hidden, d.hidden), inter = of(k.intermediate, d.intermediate);
        const Want q = times(k.heads, d.n_head, key_length, d.head_dim);
        const Want kv = times(k.kv_heads, d.n_kv_head, key_length, d.head_dim);
        const Want hd = of(key_length, d.head_dim);
        for (int64_t i = 0; i < n; i++) {
            const std::string p = prefix + std::to_string(i) + ".";
            for (const char *attn : {"self_attn.", "cross_attn."}) {
                if (std::string(attn) == "cross_attn." && !cross_attention) continue;
                shape(p + attn + "q_proj.weight", {q, hidden});
                shape(p + attn + "k_proj.weight", {kv, hidden});
                shape(p + attn + "v_proj.weight", {kv, hidden});
                shape(p + attn + "o_proj.weight", {hidden, q});
                shape(p + attn + "q_norm.weight", {hd});
                shape(p + attn + "k_norm.weight", {hd});
            }
            shape(p + "mlp.gate_proj.weight", {inter, hidden});
            shape(p + "mlp.up_proj.weight", {inter, hidden});
            shape(p + "mlp.down_proj.weight", {hidden, inter});
            for (const char *norm : norms) shape(p + norm, {hidden});
        }
    }

  private:
    const Source &s_;
    const GGUFFile &f_;
};

// A stack's sizes as its first layer's tensors show them (0 where it has none).
struct Measured {
    int64_t layers = 0, hidden = 0, intermediate = 0, heads = 0, kv_heads = 0, head_dim = 0;
};

Measured measure(const GGUFFile &f, const std::string &prefix) {
    Measured m;
    while (f.find(prefix + std::to_string(m.layers) + ".self_attn.q_proj.weight")) m.layers++;
    const std::string p = prefix + "0.";
    const TensorInfo *q = f.find(p + "self_attn.q_proj.weight"), *k = f.find(p + "self_attn.k_proj.weight");
    const TensorInfo *qn = f.find(p + "self_attn.q_norm.weight"), *up = f.find(p + "mlp.up_proj.weight");
    if (qn) m.head_dim = qn->numel();
    if (q && q->n_dims == 2) {
        m.hidden = q->ne[0];
        if (m.head_dim > 0) m.heads = q->ne[1] / m.head_dim;
    }
    if (k && k->n_dims == 2 && m.head_dim > 0) m.kv_heads = k->ne[1] / m.head_dim;
    if (up && up->n_dims == 2) m.intermediate = up->ne[1];
    return m;
}

// Axis `axis` of a tensor's PyTorch shape, counted from the end when negative; 0 when absent.
int64_t dim(const GGUFFile &f, const std::string &tensor, int axis) {
    const TensorInfo *t = f.find(tensor);
    if (!t) return 0;
    const std::vector<int64_t> s = t->torch_shape();
    const int i = axis < 0 ? (int)s.size() + axis : axis;
    return i >= 0 && i < (int)s.size() ? s[i] : 0;
}

// The first value that is known (non-zero).
int64_t first(std::initializer_list<int64_t> values) {
    for (int64_t v : values)
        if (v) return v;
    return 0;
}

bool has_prefix(const GGUFFile &f, const std::string &prefix) {
    return std::any_of(f.tensors().begin(), f.tensors().end(),
                       [&](const TensorInfo &t) { return t.name.compare(0, prefix.size(), prefix) == 0; });
}

}  // namespace

std::string KeyTable::gguf_key(const HParamKey &k) const {
    if (!k.gguf) return "";
    return k.under_arch ? std::string(architecture) + "." + k.gguf : k.gguf;
}

const KeyTable &hparam_keys(const std::string &architecture) {
    for (const KeyTable *t : {&kDiT, &kTextEnc, &kLM, &kVAE})
        if (architecture == t->architecture) return *t;
    throw InputError(fmt("no hyperparameters for '%s': the kinds are acestep-dit, acestep-text-enc, acestep-lm "
                         "and acestep-vae", architecture.c_str()));
}

const char *key_type_name(KeyType type) {
    switch (type) {
        case KeyType::U32: return "u32";
        case KeyType::F32: return "f32";
        case KeyType::Bool: return "bool";
        case KeyType::IntArray: return "int_array";
        case KeyType::StrList: return "str_list";
    }
    return "";
}

// ---------------------------------------------------------------------------
// The DiT file

std::vector<bool> DiTHParams::sliding_layers(int64_t n) const {
    std::vector<bool> out;
    for (int64_t i = 0; i < n; i++) out.push_back(sliding((size_t)i));
    return out;
}

Dims DiTHParams::decoder_dims() const {
    return {hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size, (float)rms_norm_eps,
            (float)rope_theta};
}

Dims DiTHParams::encoder_dims() const {
    return {encoder_hidden_size, encoder_num_attention_heads, encoder_num_key_value_heads, head_dim,
            encoder_intermediate_size, (float)rms_norm_eps, (float)rope_theta};
}

Dims DiTHParams::tokenizer_dims() const {
    Dims d = encoder_dims();
    d.hidden = fsq_dim;
    return d;
}

DiTHParams read_dit_hparams(const GGUFFile &f) {
    const Source s(f, kDiT);
    const Checker c(s);
    DiTHParams h;
    h.is_turbo = s.boolean(is_turbo);
    h.shift = s.stated_number(shift);
    h.has_decoder = has_prefix(f, "decoder.");
    h.has_encoder = has_prefix(f, "encoder.");
    h.has_tokenizer = has_prefix(f, "tokenizer.");
    h.has_detokenizer = has_prefix(f, "detokenizer.");

    // Sizes: stated, else as the tensors show them; a file may lack any part.
    const Measured dec = measure(f, "decoder.layers."), lyric = measure(f, "encoder.lyric_encoder.layers."),
                   timbre = measure(f, "encoder.timbre_encoder.layers."),
                   pooler = measure(f, "tokenizer.attention_pooler.layers."), detok = measure(f, "detokenizer.layers.");
    const Measured enc = lyric.layers ? lyric : timbre;
    auto any = [&](int64_t Measured::*field) {
        return first({dec.*field, enc.*field, pooler.*field, detok.*field});
    };
    h.head_dim = s.integer(key_length, any(&Measured::head_dim));
    h.hidden_size = s.integer(embedding_length, any(&Measured::hidden));
    h.intermediate_size = s.integer(feed_forward_length, any(&Measured::intermediate));
    h.num_attention_heads = s.integer(head_count, any(&Measured::heads));
    h.num_key_value_heads = s.integer(head_count_kv, any(&Measured::kv_heads));
    h.num_hidden_layers = s.integer(block_count, dec.layers);
    h.rms_norm_eps = s.number(rms_eps);
    h.rope_theta = s.number(rope_freq_base);
    h.in_channels = s.integer(in_channels, dim(f, "decoder.proj_in.1.weight", 1));
    h.audio_acoustic_hidden_dim =
        s.integer(audio_acoustic_hidden_dim, first({dim(f, "decoder.proj_out.1.weight", 1),
                                                    dim(f, "tokenizer.audio_acoustic_proj.weight", 1),
                                                    dim(f, "detokenizer.proj_out.weight", 0)}));
    h.patch_size = s.integer(patch_size, dim(f, "decoder.proj_in.1.weight", 2));
    h.sliding_window = s.integer(sliding_window);

    h.encoder_hidden_size = s.integer(
        encoder_hidden_size,
        first({enc.hidden, dim(f, "encoder.text_projector.weight", 0), dim(f, "decoder.condition_embedder.weight", 1),
               h.hidden_size}));
    if (!s.stated(embedding_length) && !h.has_decoder) h.hidden_size = h.encoder_hidden_size;
    h.encoder_intermediate_size = s.integer(encoder_intermediate_size, first({enc.intermediate, h.intermediate_size}));
    h.encoder_num_attention_heads = s.integer(encoder_num_attention_heads, first({enc.heads, h.num_attention_heads}));
    h.encoder_num_key_value_heads =
        s.integer(encoder_num_key_value_heads, first({enc.kv_heads, h.num_key_value_heads}));
    h.text_hidden_dim = s.integer(text_hidden_dim, first({dim(f, "encoder.text_projector.weight", 1),
                                                          dim(f, "encoder.lyric_encoder.embed_tokens.weight", 1)}));
    h.timbre_hidden_dim = s.integer(timbre_hidden_dim, first({dim(f, "encoder.timbre_encoder.embed_tokens.weight", 1),
                                                              dim(f, "silence_latent", -1)}));
    h.num_lyric_encoder_hidden_layers = s.integer(num_lyric_layers, lyric.layers);
    h.num_timbre_encoder_hidden_layers = s.integer(num_timbre_layers, timbre.layers);
    h.timbre_fix_frame = s.integer(timbre_fix_frame);
    h.silence_frames = f.find("silence_latent") ? dim(f, "silence_latent", 0) : 0;

    h.fsq_input_levels = s.integers(fsq_input_levels);
    h.fsq_dim = s.integer(fsq_dim, first({dim(f, "tokenizer.quantizer.project_out.weight", 0),
                                          dim(f, "tokenizer.quantizer.project_in.weight", 1), pooler.hidden,
                                          detok.hidden}));
    h.pool_window_size = s.integer(pool_window_size, first({dim(f, "detokenizer.special_tokens", -2), 5}));
    h.num_attention_pooler_hidden_layers = s.integer(num_pooler_layers, pooler.layers);
    h.num_detokenizer_hidden_layers = s.integer(num_pooler_layers, detok.layers);

    // XL (acestep-v15-xl-*): a 2560-wide DiT over a 2048-wide condition encoder, tokenizer and
    // detokenizer, bridged by decoder.condition_embedder; its timbre encoder prepends a learned CLS
    // token.  As acestep.cpp (0308fa5, src/cond-enc.h) tells XL: by a stated encoder_hidden_size
    // (2B configs omit it; 2B checkpoints hold the special_token tensor too, unused).
    h.timbre_cls = s.stated(encoder_hidden_size);

    for (const K *k : {&block_count, &num_lyric_layers, &num_timbre_layers, &num_pooler_layers})
        c.at_most(*k, s.integer(*k), kMaxLayers);

    // Layer types: one per layer index, shared by every stack, as the reference's config has them.
    const int64_t longest = std::max({h.num_hidden_layers, h.num_lyric_encoder_hidden_layers,
                                      h.num_timbre_encoder_hidden_layers, h.num_attention_pooler_hidden_layers,
                                      h.num_detokenizer_hidden_layers});
    h.layer_types = s.strings(layer_types);
    if (s.stated(layer_types) && h.has_decoder && (int64_t)h.layer_types.size() != h.num_hidden_layers)
        s.fail(fmt("config.json's layer_types has %zu entries for %s = %lld layers", h.layer_types.size(),
                   s.name(block_count).c_str(), (long long)h.num_hidden_layers));
    for (const std::string &t : h.layer_types)
        if (t != "sliding_attention" && t != "full_attention")
            s.fail(fmt("config.json's layer_types holds '%s'; each is sliding_attention or full_attention", t.c_str()));
    for (int64_t i = (int64_t)h.layer_types.size(); i < longest; i++)
        h.layer_types.push_back(i % 2 == 0 ? "sliding_attention" : "full_attention");

    // Sanity.  Sizes a present part needs must be positive; stated ones are checked either way.
    auto size = [&](const K &k, int64_t v, int64_t max, bool needed) {
        if (needed || s.stated(k)) c.size(k, v, max);
    };
    const bool attn = h.has_decoder || h.has_encoder || h.has_tokenizer || h.has_detokenizer;
    size(key_length, h.head_dim, kMaxHeadDim, attn);
    size(embedding_length, h.hidden_size, kMaxWidth, h.has_decoder);
    size(feed_forward_length, h.intermediate_size, kMaxWidth, h.has_decoder);
    size(head_count, h.num_attention_heads, kMaxHeads, h.has_decoder);
    size(head_count_kv, h.num_key_value_heads, kMaxHeads, h.has_decoder);
    size(in_channels, h.in_channels, kMaxWidth, h.has_decoder);
    size(audio_acoustic_hidden_dim, h.audio_acoustic_hidden_dim, kMaxWidth, h.has_decoder || h.has_tokenizer);
    size(patch_size, h.patch_size, kMaxPatch, h.has_decoder);
    size(sliding_window, h.sliding_window, kMaxWindow, attn);
    size(encoder_hidden_size, h.encoder_hidden_size, kMaxWidth, h.has_encoder);
    // The condition encoder's heads and MLP width are the tokenizer's and detokenizer's too.
    const bool encoder_like = h.has_encoder || h.has_tokenizer || h.has_detokenizer;
    size(encoder_intermediate_size, h.encoder_intermediate_size, kMaxWidth, encoder_like);
    size(encoder_num_attention_heads, h.encoder_num_attention_heads, kMaxHeads, encoder_like);
    size(encoder_num_key_value_heads, h.encoder_num_key_value_heads, kMaxHeads, encoder_like);
    size(text_hidden_dim, h.text_hidden_dim, kMaxWidth, h.has_encoder);
    size(timbre_hidden_dim, h.timbre_hidden_dim, kMaxWidth, h.has_encoder);
    size(timbre_fix_frame, h.timbre_fix_frame, 1 << 20, h.has_encoder);
    size(fsq_dim, h.fsq_dim, kMaxWidth, h.has_tokenizer || h.has_detokenizer);
    size(pool_window_size, h.pool_window_size, kMaxPool, h.has_tokenizer || h.has_detokenizer);
    c.real(rms_eps, h.rms_norm_eps, 1.0);
    c.rope_base(rope_freq_base, h.rope_theta);
    c.heads(head_count, h.num_attention_heads, head_count_kv, h.num_key_value_heads);
    c.heads(encoder_num_attention_heads, h.encoder_num_attention_heads, encoder_num_key_value_heads,
            h.encoder_num_key_value_heads);
    if (h.has_decoder && h.in_channels != 3 * h.audio_acoustic_hidden_dim)
        s.fail(fmt("%s = %lld is not 3 x %s = %lld (src_latents, chunk_mask and x_t per frame)",
                   s.name(in_channels).c_str(), (long long)h.in_channels, s.name(audio_acoustic_hidden_dim).c_str(),
                   (long long)h.audio_acoustic_hidden_dim));
    h.codebook_size = 1;
    for (int64_t l : h.fsq_input_levels) {
        if (l < 2 || l > 65536)
            s.fail(fmt("%s holds %lld; levels must be in [2, 65536]", s.name(fsq_input_levels).c_str(), (long long)l));
        h.codebook_size *= l;
        if (h.codebook_size > INT32_MAX)
            s.fail(fmt("%s multiply to over 2^31 codes", s.name(fsq_input_levels).c_str()));
    }
    if (h.fsq_input_levels.empty()) s.fail(fmt("%s is empty", s.name(fsq_input_levels).c_str()));
    if (s.integer(fsq_input_num_quantizers) != 1)
        s.fail(fmt("%s is not 1; ACE-Step 1.5 codes hold one FSQ index per frame",
                   s.name(fsq_input_num_quantizers).c_str()));

    // Against the tensors.
    const Want H = c.of(embedding_length, h.hidden_size), E = c.of(encoder_hidden_size, h.encoder_hidden_size);
    const Want A = c.of(audio_acoustic_hidden_dim, h.audio_acoustic_hidden_dim), P = c.of(patch_size, h.patch_size);
    const Want F = c.of(fsq_dim, h.fsq_dim);
    const Checker::StackKeys decoder_keys{embedding_length, feed_forward_length, head_count, head_count_kv,
                                          block_count};
    const Checker::StackKeys encoder_keys{encoder_hidden_size, encoder_intermediate_size, encoder_num_attention_heads,
                                          encoder_num_key_value_heads, num_lyric_layers};
    const std::vector<const char *> qwen3_norms = {"input_layernorm.weight", "post_attention_layernorm.weight"};
    if (h.has_decoder) {
        c.stack("decoder.layers.", h.decoder_dims(), h.num_hidden_layers, decoder_keys,
                {"self_attn_norm.weight", "cross_attn_norm.weight", "mlp_norm.weight"}, /*cross_attention=*/true);
        c.shape("decoder.condition_embedder.weight", {H, E});
        c.shape("decoder.proj_in.1.weight", {H, c.of(in_channels, h.in_channels), P});
        c.shape("decoder.proj_out.1.weight", {H, A, P});
        c.shape("decoder.proj_out.1.bias", {A});
        c.shape("decoder.norm_out.weight", {H});
    }
    if (h.has_encoder) {
        const Want T = c.of(text_hidden_dim, h.text_hidden_dim);
        c.stack("encoder.lyric_encoder.layers.", h.encoder_dims(), h.num_lyric_encoder_hidden_layers, encoder_keys,
                qwen3_norms);
        const Checker::StackKeys timbre_keys{encoder_hidden_size, encoder_intermediate_size, encoder_num_attention_heads,
                                          encoder_num_key_value_heads, num_timbre_layers};
        c.stack("encoder.timbre_encoder.layers.", h.encoder_dims(), h.num_timbre_encoder_hidden_layers, timbre_keys,
                qwen3_norms);
        c.shape("encoder.text_projector.weight", {E, T});
        c.shape("encoder.lyric_encoder.embed_tokens.weight", {E, T});
        c.shape("encoder.lyric_encoder.norm.weight", {E});
        c.shape("encoder.timbre_encoder.embed_tokens.weight", {E, c.of(timbre_hidden_dim, h.timbre_hidden_dim)});
        c.shape("encoder.timbre_encoder.norm.weight", {E});
        if (h.timbre_cls) c.shape("encoder.timbre_encoder.special_token", {E});
        c.shape("null_condition_emb", {E});
        if (h.silence_frames && h.silence_frames < h.timbre_fix_frame)
            s.fail(fmt("tensor 'silence_latent' has %lld frames, fewer than %s = %lld", (long long)h.silence_frames,
                       s.name(timbre_fix_frame).c_str(), (long long)h.timbre_fix_frame));
        c.shape("silence_latent", {{h.silence_frames, "its frames"}, c.of(timbre_hidden_dim, h.timbre_hidden_dim)});
    }
    const Want levels{(int64_t)h.fsq_input_levels.size(), "the length of " + s.name(fsq_input_levels)};
    const Checker::StackKeys pooler_keys{fsq_dim, encoder_intermediate_size, encoder_num_attention_heads,
                                         encoder_num_key_value_heads, num_pooler_layers};
    if (h.has_tokenizer) {
        c.stack("tokenizer.attention_pooler.layers.", h.tokenizer_dims(), h.num_attention_pooler_hidden_layers,
                pooler_keys, qwen3_norms);
        c.shape("tokenizer.audio_acoustic_proj.weight", {F, A});
        c.shape("tokenizer.attention_pooler.embed_tokens.weight", {F, F});
        c.shape("tokenizer.attention_pooler.special_token", {F});
        c.shape("tokenizer.quantizer.project_in.weight", {levels, F});
        c.shape("tokenizer.quantizer.project_out.weight", {F, levels});
        if (h.silence_frames && h.silence_frames < h.pool_window_size - 1)
            s.fail(fmt("tensor 'silence_latent' has %lld frames; the tokenizer pads a last window of %s = %lld "
                       "with up to %lld of them", (long long)h.silence_frames, s.name(pool_window_size).c_str(),
                       (long long)h.pool_window_size, (long long)h.pool_window_size - 1));
        c.shape("silence_latent", {{h.silence_frames, "its frames"}, A});
    }
    if (h.has_detokenizer) {
        c.stack("detokenizer.layers.", h.tokenizer_dims(), h.num_detokenizer_hidden_layers, pooler_keys, qwen3_norms);
        c.shape("detokenizer.embed_tokens.weight", {F, F});
        c.shape("detokenizer.special_tokens", {c.of(pool_window_size, h.pool_window_size), F});
        c.shape("detokenizer.proj_out.weight", {A, F});
    }
    return h;
}

// ---------------------------------------------------------------------------
// Qwen3 files: the text encoder and the LM

namespace {

// `prefix`: "" for the text encoder, "model." for the LM.
void read_qwen3(const Source &s, const std::string &prefix, TextEncHParams &h) {
    const GGUFFile &f = s.file();
    const Checker c(s);
    const Measured m = measure(f, prefix + "layers.");
    const std::string embed = prefix + "embed_tokens.weight";
    h.vocab_size = s.integer(vocab_size, dim(f, embed, 0));
    h.hidden_size = s.integer(embedding_length, first({m.hidden, dim(f, embed, 1)}));
    h.intermediate_size = s.integer(feed_forward_length, m.intermediate);
    h.num_hidden_layers = s.integer(block_count, m.layers);
    h.num_attention_heads = s.integer(head_count, m.heads);
    h.num_key_value_heads = s.integer(head_count_kv, m.kv_heads);
    h.head_dim = s.integer(key_length, m.head_dim);
    h.max_position_embeddings = s.stated_integer(context_length);
    h.rms_norm_eps = s.number(rms_eps);
    h.rope_theta = s.number(rope_freq_base);

    c.size(vocab_size, h.vocab_size, kMaxVocab);
    c.size(embedding_length, h.hidden_size, kMaxWidth);
    c.size(feed_forward_length, h.intermediate_size, kMaxWidth);
    c.size(block_count, h.num_hidden_layers, kMaxLayers);
    c.size(head_count, h.num_attention_heads, kMaxHeads);
    c.size(head_count_kv, h.num_key_value_heads, kMaxHeads);
    c.size(key_length, h.head_dim, kMaxHeadDim);
    if (h.max_position_embeddings) c.size(context_length, *h.max_position_embeddings, 1 << 30);
    c.real(rms_eps, h.rms_norm_eps, 1.0);
    c.rope_base(rope_freq_base, h.rope_theta);
    c.heads(head_count, h.num_attention_heads, head_count_kv, h.num_key_value_heads);

    const Want V = c.of(vocab_size, h.vocab_size), H = c.of(embedding_length, h.hidden_size);
    c.stack(prefix + "layers.", h.dims(), h.num_hidden_layers,
            {embedding_length, feed_forward_length, head_count, head_count_kv, block_count},
            {"input_layernorm.weight", "post_attention_layernorm.weight"});
    c.shape(embed, {V, H});
    c.shape(prefix + "norm.weight", {H});
}

}  // namespace

Dims TextEncHParams::dims() const {
    return {hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size, (float)rms_norm_eps,
            (float)rope_theta};
}

TextEncHParams read_text_enc_hparams(const GGUFFile &f) {
    TextEncHParams h;
    read_qwen3(Source(f, kTextEnc), "", h);
    return h;
}

LMHParams read_lm_hparams(const GGUFFile &f) {
    const Source s(f, kLM);
    LMHParams h;
    read_qwen3(s, "model.", h);
    // Published files say whether the head is tied; a file without lm_head.weight can only be tied.
    const bool has_head = f.find("lm_head.weight") != nullptr;
    h.tie_word_embeddings = s.boolean(tie_word_embeddings, !has_head);
    if (!h.tie_word_embeddings && !has_head)
        s.fail(fmt("%s is false, but tensor 'lm_head.weight' is missing", s.name(tie_word_embeddings).c_str()));
    const Checker c(s);
    c.shape("lm_head.weight", {c.of(vocab_size, h.vocab_size), c.of(embedding_length, h.hidden_size)});
    return h;
}

// ---------------------------------------------------------------------------
// The VAE

VAEHParams read_vae_hparams(const GGUFFile &f) {
    const Source s(f, kVAE);
    const Checker c(s);
    VAEHParams h;
    h.encoder_hidden_size = s.integer(vae_encoder_hidden_size);
    h.downsampling_ratios = s.integers(downsampling_ratios);
    h.channel_multiples = s.integers(channel_multiples);
    h.decoder_channels = s.integer(decoder_channels);
    h.decoder_input_channels = s.integer(decoder_input_channels);
    h.audio_channels = s.integer(audio_channels);
    h.sampling_rate = s.integer(sampling_rate);
    h.has_encoder = f.find("encoder.conv1.weight_v") || f.find("encoder.conv1.weight");

    const size_t n = h.downsampling_ratios.size();
    if (n == 0 || n != h.channel_multiples.size() || n > 16)
        s.fail(fmt("%s and %s must hold equally many (1 to 16) entries", s.name(downsampling_ratios).c_str(),
                   s.name(channel_multiples).c_str()));
    h.hop_length = 1;
    for (int64_t r : h.downsampling_ratios) {
        if (r < 2 || r > 1024 || r % 2)
            s.fail(fmt("%s holds %lld; ratios must be even, 2..1024 (odd ratios change the frame count)",
                       s.name(downsampling_ratios).c_str(), (long long)r));
        h.hop_length *= r;
        if (h.hop_length > (1 << 20)) s.fail(fmt("%s multiply to over 2^20", s.name(downsampling_ratios).c_str()));
    }
    for (int64_t m : h.channel_multiples)
        if (m < 1 || m > 1024)
            s.fail(fmt("%s holds %lld, outside 1..1024", s.name(channel_multiples).c_str(), (long long)m));
    c.size(decoder_channels, h.decoder_channels, kMaxVAEChannels);
    c.size(decoder_input_channels, h.decoder_input_channels, kMaxWidth);
    c.size(audio_channels, h.audio_channels, 64);
    c.size(sampling_rate, h.sampling_rate, 1 << 22);
    c.size(vae_encoder_hidden_size, h.encoder_hidden_size, kMaxVAEChannels);
    if (h.encoder_hidden_size != 2 * h.decoder_input_channels)
        s.fail(fmt("%s = %lld must be twice %s = %lld (the encoder's output is mean and scale)",
                   s.name(vae_encoder_hidden_size).c_str(), (long long)h.encoder_hidden_size,
                   s.name(decoder_input_channels).c_str(), (long long)h.decoder_input_channels));

    // The outermost convolutions and the block count, where the weight is plain or weight-normed.
    auto kernel = [&](const std::string &p) { return f.find(p + ".weight") ? p + ".weight" : p + ".weight_v"; };
    const Want latent = c.of(decoder_input_channels, h.decoder_input_channels);
    const Want audio = c.of(audio_channels, h.audio_channels), dch = c.of(decoder_channels, h.decoder_channels);
    const Want widest{h.decoder_channels * h.channel_multiples.back(),
                      s.name(decoder_channels) + " x the last of " + s.name(channel_multiples)};
    c.shape(kernel("decoder.conv1"), {widest, latent, {7, "its kernel"}});
    c.shape(kernel("decoder.conv2"), {audio, dch, {7, "its kernel"}});
    const std::string past = "decoder.block." + std::to_string(n) + ".conv_t1";
    if (f.find(past + ".weight") || f.find(past + ".weight_v"))
        s.fail(fmt("%s has %zu entries, but the file has a decoder block %zu ('%s')",
                   s.name(downsampling_ratios).c_str(), n, n, kernel(past).c_str()));
    if (h.has_encoder) {
        const Want ench = c.of(vae_encoder_hidden_size, h.encoder_hidden_size);
        c.shape(kernel("encoder.conv1"), {ench, audio, {7, "its kernel"}});
        const Want encw{h.encoder_hidden_size * h.channel_multiples.back(),
                        s.name(vae_encoder_hidden_size) + " x the last of " + s.name(channel_multiples)};
        c.shape(kernel("encoder.conv2"), {ench, encw, {3, "its kernel"}});
    }
    return h;
}

}  // namespace ace

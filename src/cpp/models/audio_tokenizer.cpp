// audio_tokenizer.cpp: the pooler graph, then FSQ rounding on the host.
#include "models/audio_tokenizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/format.h"

namespace ace {

// Windows per graph: each window is its own sequence, so chunking is exact and bounds the
// activations (pool + 1 tokens x intermediate width per window) for long songs.
static constexpr int64_t kWindowsPerGraph = 512;

AudioTokenizer::AudioTokenizer(std::shared_ptr<GGUFFile> dit, std::shared_ptr<Backend> backend)
    : hp_(read_dit_hparams(*dit)), w_(dit, backend), runner_(backend) {
    if (!hp_.has_tokenizer)
        throw FileError(fmt("%s: the file holds no audio tokenizer (no tokenizer.* tensors)", dit->path().c_str()));
    const Dims d = hp_.tokenizer_dims();
    const int64_t in_dim = hp_.audio_acoustic_hidden_dim, pool = hp_.pool_window_size;
    audio_acoustic_proj_.load(w_, "tokenizer.audio_acoustic_proj", in_dim, d.hidden, true);
    pooler_.load(w_, "tokenizer.attention_pooler.", d.hidden, d,
                 hp_.sliding_layers(hp_.num_attention_pooler_hidden_layers), hp_.sliding_window);
    special_token_ = w_.get("tokenizer.attention_pooler.special_token", {d.hidden}, Store::F32);
    project_in_.load(w_, "tokenizer.quantizer.project_in", d.hidden, (int64_t)hp_.fsq_input_levels.size(), true);
    silence_head_ = dit->read_f32("silence_latent");  // at least pool - 1 frames: read_dit_hparams checks
    silence_head_.resize((pool - 1) * in_dim);
    w_.load();
}

ggml_tensor *AudioTokenizer::build(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos,
                                   ggml_tensor *window_mask) const {
    const int64_t n = x->ne[2], hidden = hp_.fsq_dim;
    x = pooler_.embed_tokens(ctx, audio_acoustic_proj_(ctx, x));  // [H, pool, N]
    ggml_tensor *slot = ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, special_token_, hidden, 1, 1), hidden, 1, n, 1);
    x = ggml_concat(ctx, slot, x, 1);                              // [H, pool + 1, N]: slot first
    x = pooler_.layers_and_norm(ctx, x, pos, window_mask, nullptr, 1);  // [H, 1, N]: only the slot is read
    x = ggml_view_2d(ctx, x, hidden, n, x->nb[2], 0);             // [H, N]: each window's slot
    return project_in_(ctx, x);                                    // [levels, N]
}

std::vector<int64_t> AudioTokenizer::tokenize(const std::vector<float> &latents) {
    const std::vector<int64_t> &levels = hp_.fsq_input_levels;
    const int64_t in_dim = hp_.audio_acoustic_hidden_dim, pool = hp_.pool_window_size;
    if (latents.empty() || latents.size() % in_dim != 0)
        throw InputError(fmt("latents must be [T, %lld] with T >= 1, got %zu values", (long long)in_dim,
                             latents.size()));
    for (float v : latents)
        if (!std::isfinite(v)) throw InputError("latents contain NaN or infinity");
    const int64_t t = (int64_t)latents.size() / in_dim;
    const int64_t n = (t + pool - 1) / pool, nl = (int64_t)levels.size();
    std::vector<float> padded(latents);
    padded.insert(padded.end(), silence_head_.begin(), silence_head_.begin() + (n * pool - t) * in_dim);

    const int64_t seq = pool + 1;
    auto p = iota(seq);
    auto win = make_mask(seq, seq, MaskKind::Window, pooler_.window);
    std::vector<int64_t> codes(n);
    for (int64_t first = 0; first < n; first += kWindowsPerGraph) {
        const int64_t m = std::min(kWindowsPerGraph, n - first);
        Graph g;
        ggml_tensor *in = g.input("latents", GGML_TYPE_F32, {m, pool, in_dim});
        ggml_tensor *pos = g.input("pos", GGML_TYPE_I32, {seq});
        ggml_tensor *wm = pooler_.window < seq - 1 ? g.input("window_mask", GGML_TYPE_F16, {seq, seq}) : nullptr;
        ggml_tensor *out = build(g.ctx(), in, pos, wm);
        g.output(out);
        runner_.alloc(g);
        set_input(in, padded.data() + first * pool * in_dim, (size_t)(m * pool * in_dim));
        set_input(pos, p.data(), p.size());
        if (wm) set_input(wm, win.data(), win.size());
        runner_.compute(g);
        std::vector<float> z = get_output(out);

        // FSQ in float32, in the reference's order of operations, so that a value on a rounding
        // edge falls the same way: a tanh soft clamp to +-(1 + 1/(L-1)), then the nearest of L
        // steps over [-1, 1].
        for (int64_t j = 0; j < m; j++) {
            int64_t code = 0, basis = 1;
            for (int64_t i = 0; i < nl; i++) {
                const float lm1 = (float)(levels[i] - 1);
                const float soft = 1.0f + 1.0f / lm1;
                float v = std::tanh(z[j * nl + i] / soft) * soft;
                v = std::min(1.0f, std::max(-1.0f, v));
                auto digit = (int64_t)std::floor(lm1 * (v + 1.0f) / 2.0f + 0.5f);
                code += std::min<int64_t>(digit, levels[i] - 1) * basis;
                basis *= levels[i];
            }
            codes[first + j] = code;
        }
    }
    return codes;
}

}  // namespace ace

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

AudioTokenizer::AudioTokenizer(const std::string &dit_path, std::shared_ptr<Backend> backend)
    : file_(std::make_shared<GGUFFile>(dit_path)), w_(file_, backend), runner_(backend) {
    file_->expect_architecture("acestep-dit");
    DitAttnConfig cfg(*file_);
    levels_ = fsq_levels(*file_);
    for (auto l : levels_) codebook_ *= l;
    auto proj = file_->require("tokenizer.audio_acoustic_proj.weight").torch_shape();
    auto pin = file_->require("tokenizer.quantizer.project_in.weight").torch_shape();
    if (proj.size() != 2 || pin.size() != 2 || pin[0] != (int64_t)levels_.size() || pin[1] != proj[0])
        throw FileError(fmt("%s: tokenizer.quantizer.project_in.weight %s does not map the pooler's %lld channels "
                            "to the %zu FSQ levels", dit_path.c_str(), shape_str(pin).c_str(),
                            (long long)(proj.empty() ? 0 : proj[0]), levels_.size()));
    hidden_ = proj[0];
    in_dim_ = proj[1];
    pool_ = file_->config().get_int("pool_window_size", 5);
    if (pool_ < 1 || pool_ > 64)
        throw FileError(fmt("%s: pool_window_size %lld is outside 1..64", dit_path.c_str(), (long long)pool_));
    audio_acoustic_proj_.load(w_, "tokenizer.audio_acoustic_proj", in_dim_, hidden_, true);
    pooler_.load(w_, "tokenizer.attention_pooler.", hidden_, cfg.eps, cfg.theta, cfg.window);
    special_token_ = w_.get("tokenizer.attention_pooler.special_token", {hidden_}, Store::F32);
    project_in_.load(w_, "tokenizer.quantizer.project_in", hidden_, (int64_t)levels_.size(), true);

    const TensorInfo &sl = file_->require("silence_latent");
    auto s = sl.torch_shape();
    if (s.empty() || s.back() != in_dim_ || sl.numel() < (pool_ - 1) * in_dim_)
        throw FileError(fmt("%s: silence_latent has shape %s, expected [>= %lld, %lld]", dit_path.c_str(),
                            shape_str(s).c_str(), (long long)pool_ - 1, (long long)in_dim_));
    silence_head_ = file_->read_f32(sl);
    silence_head_.resize((pool_ - 1) * in_dim_);
    w_.load();
}

ggml_tensor *AudioTokenizer::build(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos,
                                   ggml_tensor *window_mask) const {
    const int64_t n = x->ne[2];
    x = pooler_.embed_tokens(ctx, audio_acoustic_proj_(ctx, x));  // [H, pool, N]
    ggml_tensor *slot = ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, special_token_, hidden_, 1, 1), hidden_, 1, n, 1);
    x = ggml_concat(ctx, slot, x, 1);                              // [H, pool + 1, N]: slot first
    x = pooler_.layers_and_norm(ctx, x, pos, window_mask, nullptr);
    x = ggml_view_2d(ctx, x, hidden_, n, x->nb[2], 0);             // [H, N]: each window's slot
    return project_in_(ctx, x);                                    // [levels, N]
}

std::vector<int64_t> AudioTokenizer::tokenize(const std::vector<float> &latents) {
    if (latents.empty() || latents.size() % in_dim_ != 0)
        throw InputError(fmt("latents must be [T, %lld] with T >= 1, got %zu values", (long long)in_dim_,
                             latents.size()));
    for (float v : latents)
        if (!std::isfinite(v)) throw InputError("latents contain NaN or infinity");
    const int64_t t = (int64_t)latents.size() / in_dim_;
    const int64_t n = (t + pool_ - 1) / pool_, nl = (int64_t)levels_.size();
    std::vector<float> padded(latents);
    padded.insert(padded.end(), silence_head_.begin(), silence_head_.begin() + (n * pool_ - t) * in_dim_);

    const int64_t seq = pool_ + 1;
    auto p = iota(seq);
    auto win = make_mask(seq, seq, MaskKind::Window, pooler_.window);
    std::vector<int64_t> codes(n);
    for (int64_t first = 0; first < n; first += kWindowsPerGraph) {
        const int64_t m = std::min(kWindowsPerGraph, n - first);
        Graph g;
        ggml_tensor *in = g.input("latents", GGML_TYPE_F32, {m, pool_, in_dim_});
        ggml_tensor *pos = g.input("pos", GGML_TYPE_I32, {seq});
        ggml_tensor *wm = pooler_.window < seq - 1 ? g.input("window_mask", GGML_TYPE_F16, {seq, seq}) : nullptr;
        ggml_tensor *out = build(g.ctx(), in, pos, wm);
        g.output(out);
        runner_.alloc(g);
        set_input(in, padded.data() + first * pool_ * in_dim_, (size_t)(m * pool_ * in_dim_));
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
                const float lm1 = (float)(levels_[i] - 1);
                const float soft = 1.0f + 1.0f / lm1;
                float v = std::tanh(z[j * nl + i] / soft) * soft;
                v = std::min(1.0f, std::max(-1.0f, v));
                auto digit = (int64_t)std::floor(lm1 * (v + 1.0f) / 2.0f + 0.5f);
                code += std::min<int64_t>(digit, levels_[i] - 1) * basis;
                basis *= levels_[i];
            }
            codes[first + j] = code;
        }
    }
    return codes;
}

}  // namespace ace

// dit.cpp: the ACE-Step 1.5 DiT as one ggml graph per (batch, length, encoder length).
//
// Data path (PyTorch order; ggml holds the same tensors with dimensions reversed):
//   [B, T, 192] -> pad T to a multiple of the patch -> patchify [B, N, H] -> 24 blocks
//   (AdaLN self-attention, cross-attention, AdaLN SwiGLU) -> AdaLN output norm
//   -> un-patchify [B, N·patch, 64] -> crop to [B, T, 64].
#include "dit.h"

#include <cmath>


namespace ace {

struct DiT::Cached {
    int64_t B = 0, Tp = 0, S = 0;
    Graph graph;
    Runner runner;
    ggml_tensor *x = nullptr, *t = nullptr, *enc = nullptr, *pos = nullptr, *window = nullptr, *out = nullptr;
    Cached(std::shared_ptr<Backend> b) : graph(32768), runner(std::move(b), 32768) {}
};

// Sizes come from the GGUF's standard keys, falling back to the embedded config.json.
static DiTConfig read_config(const GGUFFile &f) {
    const std::string a = "acestep-dit.";
    Config cj = f.config();
    auto int_key = [&](const std::string &gguf_key, const std::string &json_key) -> int64_t {
        if (f.has_key(gguf_key)) return f.get_u32(gguf_key);
        if (cj.has(json_key)) return cj.get_int(json_key, 0);
        throw FileError(fmt("%s: neither %s nor config.json's %s is present", f.path().c_str(), gguf_key.c_str(),
                            json_key.c_str()));
    };
    auto float_key = [&](const std::string &gguf_key, const std::string &json_key, double fallback) {
        if (f.has_key(gguf_key)) return f.get_f32(gguf_key);
        return (float)cj.get_float(json_key, fallback);
    };
    DiTConfig c;
    c.hidden = int_key(a + "embedding_length", "hidden_size");
    c.intermediate = int_key(a + "feed_forward_length", "intermediate_size");
    c.n_layers = int_key(a + "block_count", "num_hidden_layers");
    c.n_heads = int_key(a + "attention.head_count", "num_attention_heads");
    c.n_kv_heads = int_key(a + "attention.head_count_kv", "num_key_value_heads");
    c.head_dim = int_key(a + "attention.key_length", "head_dim");
    c.in_channels = int_key("acestep.in_channels", "in_channels");
    c.audio_dim = int_key("acestep.audio_acoustic_hidden_dim", "audio_acoustic_hidden_dim");
    c.patch = int_key("acestep.patch_size", "patch_size");
    c.sliding_window = int_key("acestep.sliding_window", "sliding_window");
    c.rope_theta = float_key(a + "rope.freq_base", "rope_theta", 1e6);
    c.eps = float_key(a + "attention.layer_norm_rms_epsilon", "rms_norm_eps", 1e-6);

    auto bad = [&](const char *what) {
        return FileError(fmt("%s: DiT config has an invalid %s", f.path().c_str(), what));
    };
    if (c.hidden <= 0 || c.intermediate <= 0 || c.n_layers <= 0 || c.head_dim <= 0) throw bad("size");
    if (c.n_heads <= 0 || c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0) throw bad("head count");
    if (c.patch <= 0 || c.audio_dim <= 0 || c.in_channels != 3 * c.audio_dim) throw bad("in_channels/patch_size");
    if (c.sliding_window <= 0) throw bad("sliding_window");

    // The reference's default when config.json lists no layer types: sliding on even layers.
    std::vector<std::string> types = cj.get_str_list("layer_types", {});
    if (!types.empty() && (int64_t)types.size() != c.n_layers) throw bad("layer_types length");
    for (int64_t i = 0; i < c.n_layers; i++) {
        std::string ty = types.empty() ? (i % 2 == 0 ? "sliding_attention" : "full_attention") : types[i];
        if (ty != "sliding_attention" && ty != "full_attention") throw bad("layer_types entry");
        c.sliding.push_back(ty == "sliding_attention");
    }
    return c;
}

// A patch convolution kernel as a matmul weight over a patch's frames laid side by side
// (frame-major, channel-minor); reordered once at load.
static std::vector<float> patch_kernel(const GGUFFile &f, const TensorInfo &t, bool transposed) {
    const std::vector<int64_t> s = t.torch_shape();  // Conv1d [out, in, P]; ConvTranspose1d [in, out, P]
    const int64_t d0 = s[0], d1 = s[1], P = s[2];
    std::vector<float> src = f.read_f32(t), dst(src.size());
    for (int64_t i = 0; i < d0; i++)
        for (int64_t j = 0; j < d1; j++)
            for (int64_t k = 0; k < P; k++) {
                const float v = src[(i * d1 + j) * P + k];
                if (transposed) dst[(k * d1 + j) * d0 + i] = v;  // -> [P·out, in]
                else dst[(i * P + k) * d1 + j] = v;              // -> [out, P·in]
            }
    return dst;
}

DiT::DiT(const std::string &path, std::shared_ptr<Backend> backend) : backend_(std::move(backend)) {
    auto file = std::make_shared<GGUFFile>(path);
    file->expect_architecture("acestep-dit");
    cfg_ = read_config(*file);
    const int64_t H = cfg_.hidden, A = cfg_.audio_dim, P = cfg_.patch, Cin = cfg_.in_channels;
    const std::string p = "decoder.";
    const TensorInfo &cond = file->require(p + "condition_embedder.weight");
    if (cond.torch_shape().size() != 2)
        throw FileError(fmt("%s: tensor '%s' is not a matrix", path.c_str(), cond.name.c_str()));
    cfg_.enc_hidden = cond.torch_shape()[1];
    weights_ = std::make_unique<Weights>(file, backend_);
    Weights &w = *weights_;

    Dims d;
    d.hidden = H, d.n_head = cfg_.n_heads, d.n_kv_head = cfg_.n_kv_heads, d.head_dim = cfg_.head_dim;
    d.intermediate = cfg_.intermediate, d.eps = cfg_.eps, d.rope_theta = cfg_.rope_theta;
    for (int64_t i = 0; i < cfg_.n_layers; i++) {
        const std::string n = p + "layers." + std::to_string(i) + ".";
        Layer l;
        l.self_attn_norm.load(w, n + "self_attn_norm.weight", H, cfg_.eps);
        l.cross_attn_norm.load(w, n + "cross_attn_norm.weight", H, cfg_.eps);
        l.mlp_norm.load(w, n + "mlp_norm.weight", H, cfg_.eps);
        l.self_attn.load(w, n + "self_attn.", d);
        l.cross_attn.load(w, n + "cross_attn.", d);
        l.mlp.load(w, n + "mlp.", H, cfg_.intermediate);
        l.scale_shift_table = w.get(n + "scale_shift_table", {6, H}, Store::F32);
        layers_.push_back(l);
    }
    for (auto [e, n] : {std::pair{&time_embed_, p + "time_embed."}, std::pair{&time_embed_r_, p + "time_embed_r."}}) {
        e->linear_1.load(w, n + "linear_1", 256, H, true);
        e->linear_2.load(w, n + "linear_2", H, H, true);
        e->time_proj.load(w, n + "time_proj", H, 6 * H, true);
    }
    condition_embedder_.load(w, p + "condition_embedder", cfg_.enc_hidden, H, true);
    norm_out_.load(w, p + "norm_out.weight", H, cfg_.eps);
    scale_shift_table_ = w.get(p + "scale_shift_table", {2, H}, Store::F32);

    auto expect = [&](const std::string &name, std::vector<int64_t> shape) -> const TensorInfo & {
        const TensorInfo &t = file->require(name);
        if (t.torch_shape() != shape)
            throw FileError(fmt("%s: tensor '%s' has shape %s, expected %s", path.c_str(), name.c_str(),
                                shape_str(t.torch_shape()).c_str(), shape_str(shape).c_str()));
        return t;
    };
    const GGUFFile &f = *file;
    const TensorInfo &win = expect(p + "proj_in.1.weight", {H, Cin, P});
    const TensorInfo &wout = expect(p + "proj_out.1.weight", {H, A, P});
    const TensorInfo &bout = expect(p + "proj_out.1.bias", {A});
    proj_in_.weight = w.derived(win.name, GGML_TYPE_F32, {H, P * Cin}, [&f, &win] { return patch_kernel(f, win, false); });
    proj_in_.bias = w.get(p + "proj_in.1.bias", {H}, Store::F32);
    proj_out_.weight = w.derived(wout.name, GGML_TYPE_F32, {P * A, H}, [&f, &wout] { return patch_kernel(f, wout, true); });
    proj_out_.bias = w.derived(bout.name, GGML_TYPE_F32, {P * A}, [&f, &bout, P] {
        std::vector<float> b = f.read_f32(bout), out;
        for (int64_t k = 0; k < P; k++) out.insert(out.end(), b.begin(), b.end());  // the same bias for every frame
        return out;
    });
    w.load();
}

DiT::~DiT() = default;

ggml_tensor *DiT::TimestepEmbedding::operator()(ggml_context *ctx, ggml_tensor *t, ggml_tensor **proj) const {
    // ggml's sinusoid is cat[cos, sin] of t·10000^(-j/half): the reference's flip_sin_to_cos layout.
    ggml_tensor *f = ggml_timestep_embedding(ctx, t, (int)linear_1.weight->ne[0], 10000);
    ggml_tensor *temb = linear_2(ctx, ggml_silu(ctx, linear_1(ctx, f)));
    *proj = time_proj(ctx, ggml_silu(ctx, temb));
    return temb;
}

// One AdaLN modulation row k of mod [B, 6, H] as a [B, 1, H] tensor that broadcasts over tokens.
static ggml_tensor *mod_row(ggml_context *ctx, ggml_tensor *mod, int k) {
    return ggml_cont(ctx, ggml_view_3d(ctx, mod, mod->ne[0], 1, mod->ne[2], mod->nb[1], mod->nb[2], k * mod->nb[1]));
}

// RMSNorm(x)·(1 + scale) + shift, all [B, N, H] with scale/shift [B, 1, H].
static ggml_tensor *modulate(ggml_context *ctx, ggml_tensor *x, const RMSNorm &norm, ggml_tensor *shift,
                             ggml_tensor *scale) {
    ggml_tensor *h = norm(ctx, x);
    return ggml_add(ctx, ggml_add(ctx, h, ggml_mul(ctx, h, scale)), shift);
}

void DiT::build(int64_t B, int64_t Tp, int64_t S) {
    const int64_t H = cfg_.hidden, P = cfg_.patch, N = Tp / P, A = cfg_.audio_dim;
    cached_.reset();
    auto c = std::make_unique<Cached>(backend_);
    c->B = B, c->Tp = Tp, c->S = S;
    Graph &g = c->graph;
    ggml_context *ctx = g.ctx();

    c->x = g.input("x", GGML_TYPE_F32, {B, Tp, cfg_.in_channels});
    c->t = g.input("t", GGML_TYPE_F32, {2, B});  // row 0: 1000·t, row 1: 1000·(t − r)
    c->enc = g.input("enc", GGML_TYPE_F32, {B, S, cfg_.enc_hidden});

    // Timestep conditioning: the t and t − r embedders are summed.
    ggml_tensor *ts = ggml_view_1d(ctx, c->t, B, 0);
    ggml_tensor *tr = ggml_view_1d(ctx, c->t, B, B * sizeof(float));
    ggml_tensor *proj_t, *proj_r;
    ggml_tensor *temb = ggml_add(ctx, time_embed_(ctx, ts, &proj_t), time_embed_r_(ctx, tr, &proj_r));
    ggml_tensor *tproj = ggml_reshape_3d(ctx, ggml_add(ctx, proj_t, proj_r), H, 6, B);  // [B, 6, H]

    // x: [B, Tp, 192] -> [B, N, P·192] -> [B, N, H]
    ggml_tensor *x = proj_in_(ctx, ggml_reshape_3d(ctx, c->x, P * cfg_.in_channels, N, B));
    ggml_tensor *enc = condition_embedder_(ctx, c->enc);  // [B, S, H]

    // Self-attention: RoPE over token positions; even layers see |i − j| <= window only.
    c->pos = g.input("pos", GGML_TYPE_I32, {N});
    c->window = g.input("window", GGML_TYPE_F16, {N, N});
    for (size_t i = 0; i < layers_.size(); i++) {
        const Layer &l = layers_[i];
        ggml_tensor *mod = ggml_add(ctx, tproj, l.scale_shift_table);  // [B, 6, H]: shift, scale, gate ×2
        ggml_tensor *h = modulate(ctx, x, l.self_attn_norm, mod_row(ctx, mod, 0), mod_row(ctx, mod, 1));
        h = l.self_attn(ctx, h, c->pos, cfg_.sliding[i] ? c->window : nullptr);
        x = ggml_add(ctx, x, ggml_mul(ctx, h, mod_row(ctx, mod, 2)));
        h = l.cross_attn_norm(ctx, x);
        h = l.cross_attn.attend(ctx, l.cross_attn.query(ctx, h, nullptr), l.cross_attn.key(ctx, enc, nullptr),
                                l.cross_attn.value(ctx, enc), nullptr);
        x = ggml_add(ctx, x, h);
        h = modulate(ctx, x, l.mlp_norm, mod_row(ctx, mod, 3), mod_row(ctx, mod, 4));
        x = ggml_add(ctx, x, ggml_mul(ctx, l.mlp(ctx, h), mod_row(ctx, mod, 5)));
    }

    // Output AdaLN: (shift, scale) = table + temb, then the transposed patch conv.
    ggml_tensor *omod = ggml_add(ctx, ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, temb, H, 1, B), H, 2, B, 1),
                                 scale_shift_table_);  // [B, 2, H]
    x = modulate(ctx, x, norm_out_, mod_row(ctx, omod, 0), mod_row(ctx, omod, 1));
    x = proj_out_(ctx, x);                     // [B, N, P·64]
    c->out = ggml_reshape_3d(ctx, x, A, N * P, B);  // [B, Tp, 64]
    g.output(c->out);
    c->runner.alloc(g);
    cached_ = std::move(c);
}

std::vector<float> DiT::forward(const float *x_t, const float *src, const float *mask, const float *t,
                                const float *enc, int64_t B, int64_t T, int64_t S) {
    const int64_t A = cfg_.audio_dim, C = cfg_.in_channels, P = cfg_.patch;
    if (B < 1 || T < 1 || S < 1)
        throw InputError(fmt("DiT input sizes must be positive: batch %lld, length %lld, encoder length %lld",
                             (long long)B, (long long)T, (long long)S));
    auto check_finite = [](const float *p, int64_t n, const char *what) {
        for (int64_t i = 0; i < n; i++)
            if (!std::isfinite(p[i])) throw InputError(fmt("%s contains NaN or infinity", what));
    };
    check_finite(x_t, B * T * A, "x_t");
    check_finite(src, B * T * A, "src_latents");
    check_finite(mask, B * T * A, "chunk_mask");
    check_finite(enc, B * S * cfg_.enc_hidden, "encoder_states");
    check_finite(t, B, "t");

    const int64_t Tp = (T + P - 1) / P * P;
    if (!cached_ || cached_->B != B || cached_->Tp != Tp || cached_->S != S) build(B, Tp, S);
    Cached &c = *cached_;

    // Per frame: src_latents ‖ chunk_mask ‖ x_t, zero frames padding to a whole patch.
    std::vector<float> x((size_t)(B * Tp * C), 0.0f);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < T; i++) {
            float *row = &x[(b * Tp + i) * C];
            const int64_t o = (b * T + i) * A;
            std::copy(src + o, src + o + A, row);
            std::copy(mask + o, mask + o + A, row + A);
            std::copy(x_t + o, x_t + o + A, row + 2 * A);
        }
    std::vector<float> tv(2 * B);
    for (int64_t b = 0; b < B; b++) tv[b] = 1000.0f * t[b], tv[B + b] = 0.0f;  // r = t at inference

    set_input(c.x, x.data(), x.size());
    set_input(c.t, tv.data(), tv.size());
    set_input(c.enc, enc, (size_t)(B * S * cfg_.enc_hidden));
    const std::vector<int32_t> pos = iota(Tp / P);
    set_input(c.pos, pos.data(), pos.size());
    const std::vector<ggml_fp16_t> window = make_mask(Tp / P, Tp / P, MaskKind::Window, cfg_.sliding_window);
    ggml_backend_tensor_set(c.window, window.data(), 0, window.size() * sizeof(ggml_fp16_t));
    c.runner.compute(c.graph);
    std::vector<float> full = get_output(c.out), out((size_t)(B * T * A));
    for (int64_t b = 0; b < B; b++)
        std::copy(full.begin() + b * Tp * A, full.begin() + (b * Tp + T) * A, out.begin() + b * T * A);
    return out;
}

}  // namespace ace

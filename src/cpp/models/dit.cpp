// dit.cpp: the ACE-Step 1.5 DiT as one ggml graph per (batch, length, encoder length).
//
// Data path (PyTorch order; ggml holds the same tensors with dimensions reversed):
//   [B, T, 192] -> pad T to a multiple of the patch -> patchify [B, N, H] -> 24 blocks
//   (AdaLN self-attention, cross-attention, AdaLN SwiGLU) -> AdaLN output norm
//   -> un-patchify [B, N·patch, 64] -> crop to [B, T, 64].
//
// Split as whisper.cpp splits its decoder: what depends on the conditions alone (the
// condition embedder, every layer's cross-attention K/V, src_latents ‖ chunk_mask, positions
// and the window mask) is computed or uploaded once per generation into device tensors; a
// sampler step uploads x_t and t only.
#include "models/dit.h"

#include <cmath>

#include "core/error.h"
#include "core/format.h"
#include "core/hparams.h"
#include "core/state.h"

namespace ace {

struct DiT::Conditions {
    int64_t Be = 0, Bs = 0, T = 0, Tp = 0, S = 0;
    DeviceTensors tensors;
    ggml_tensor *context = nullptr;        // [Bs, Tp, 2·64]: src_latents ‖ chunk_mask, zero-padded
    ggml_tensor *pos = nullptr;            // I32 [N]
    ggml_tensor *window = nullptr;         // F16 [N, N]: the sliding layers' mask
    std::vector<ggml_tensor *> k, v;       // per layer [Be, S, Hkv, D] (ne: [D, Hkv, S, Be])
    Conditions(std::shared_ptr<Backend> b, size_t n_layers) : tensors(std::move(b), 2 * n_layers + 8) {}
};

struct DiT::Cached {
    int64_t B = 0, Bx = 0;
    Graph graph;
    Runner runner;
    ggml_tensor *x = nullptr, *t = nullptr, *out = nullptr;
    Cached(std::shared_ptr<Backend> b) : graph(32768), runner(std::move(b), 32768) {}
};

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

DiT::DiT(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend)
    : hp_(read_dit_hparams(*file)), backend_(std::move(backend)) {
    if (!hp_.has_decoder)
        throw FileError(fmt("%s: the file holds no DiT (no decoder.* tensors)", file->path().c_str()));
    const int64_t H = hp_.hidden_size, A = hp_.audio_acoustic_hidden_dim, P = hp_.patch_size, Cin = hp_.in_channels;
    const float eps = (float)hp_.rms_norm_eps;
    const std::string p = "decoder.";
    weights_ = std::make_unique<Weights>(file, backend_);
    Weights &w = *weights_;

    const Dims d = hp_.decoder_dims();
    for (int64_t i = 0; i < hp_.num_hidden_layers; i++) {
        const std::string n = p + "layers." + std::to_string(i) + ".";
        Layer l;
        l.self_attn_norm.load(w, n + "self_attn_norm.weight", H, eps);
        l.cross_attn_norm.load(w, n + "cross_attn_norm.weight", H, eps);
        l.mlp_norm.load(w, n + "mlp_norm.weight", H, eps);
        l.self_attn.load(w, n + "self_attn.", d);
        l.cross_attn.load(w, n + "cross_attn.", d);
        l.mlp.load(w, n + "mlp.", H, hp_.intermediate_size);
        l.scale_shift_table = w.get(n + "scale_shift_table", {6, H}, Store::F32);
        layers_.push_back(l);
    }
    for (auto [e, n] : {std::pair{&time_embed_, p + "time_embed."}, std::pair{&time_embed_r_, p + "time_embed_r."}}) {
        e->linear_1.load(w, n + "linear_1", 256, H, true);
        e->linear_2.load(w, n + "linear_2", H, H, true);
        e->time_proj.load(w, n + "time_proj", H, 6 * H, true);
    }
    condition_embedder_.load(w, p + "condition_embedder", hp_.encoder_hidden_size, H, true);
    norm_out_.load(w, p + "norm_out.weight", H, eps);
    scale_shift_table_ = w.get(p + "scale_shift_table", {2, H}, Store::F32);

    // patch_kernel indexes the convolutions' three axes: their shapes exactly, unit axes included.
    auto expect = [&](const std::string &name, std::vector<int64_t> shape) -> const TensorInfo & {
        const TensorInfo &t = file->require(name);
        if (t.torch_shape() != shape)
            throw FileError(fmt("%s: tensor '%s' has shape %s, expected %s", file->path().c_str(), name.c_str(),
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
    std::vector<Linear *> lins;
    for (auto &[name, lin] : linears()) lins.push_back(lin);
    int8_ = int8_if_asked(w, lins);
}

DiT::~DiT() = default;

void DiT::forget_conditions() {
    cached_.reset();
    conds_.reset();
}

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

static void check_finite(const float *p, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (!std::isfinite(p[i])) throw InputError(fmt("%s contains NaN or infinity", what));
}

void DiT::set_conditions(const float *enc, int64_t Be, int64_t S, const float *src, const float *mask, int64_t Bs,
                         int64_t T) {
    const int64_t A = hp_.audio_acoustic_hidden_dim, P = hp_.patch_size, D = hp_.head_dim, E = hp_.encoder_hidden_size;
    const int64_t Hkv = hp_.num_key_value_heads;
    if (Be < 1 || Bs < 1 || T < 1 || S < 1)
        throw InputError(fmt("DiT condition sizes must be positive: batch %lld / %lld, length %lld, encoder length "
                             "%lld", (long long)Be, (long long)Bs, (long long)T, (long long)S));
    check_finite(src, Bs * T * A, "src_latents");
    check_finite(mask, Bs * T * A, "chunk_mask");
    check_finite(enc, Be * S * E, "encoder_states");
    cached_.reset();  // the step graph reads the previous conditions' tensors
    conds_.reset();
    const int64_t Tp = (T + P - 1) / P * P, N = Tp / P;
    auto c = std::make_unique<Conditions>(backend_, layers_.size());
    c->Be = Be, c->Bs = Bs, c->T = T, c->Tp = Tp, c->S = S;
    c->context = c->tensors.add("context", GGML_TYPE_F32, {Bs, Tp, 2 * A});
    c->pos = c->tensors.add("pos", GGML_TYPE_I32, {N});
    c->window = c->tensors.add("window", GGML_TYPE_F16, {N, N});
    for (size_t i = 0; i < layers_.size(); i++) {
        c->k.push_back(c->tensors.add("cross_k", GGML_TYPE_F32, {Be, S, Hkv, D}));
        c->v.push_back(c->tensors.add("cross_v", GGML_TYPE_F32, {Be, S, Hkv, D}));
    }
    c->tensors.alloc("the DiT's conditions");

    // Per frame src_latents ‖ chunk_mask; zero frames pad to a whole patch.
    std::vector<float> context((size_t)(Bs * Tp * 2 * A), 0.0f);
    for (int64_t b = 0; b < Bs; b++)
        for (int64_t i = 0; i < T; i++) {
            const int64_t o = (b * T + i) * A;
            std::copy(src + o, src + o + A, &context[(b * Tp + i) * 2 * A]);
            std::copy(mask + o, mask + o + A, &context[(b * Tp + i) * 2 * A + A]);
        }
    set_input(c->context, context.data(), context.size());
    const std::vector<int32_t> pos = iota(N);
    set_input(c->pos, pos.data(), pos.size());
    const std::vector<ggml_fp16_t> window = make_mask(N, N, MaskKind::Window, hp_.sliding_window);
    set_input(c->window, window.data(), window.size());

    // enc [Be, S, E] -> condition embedder [Be, S, H] -> every layer's K (normed) and V.
    Graph g(4096);
    ggml_context *ctx = g.ctx();
    ggml_tensor *in = g.input("enc", GGML_TYPE_F32, {Be, S, E});
    ggml_tensor *e = condition_embedder_(ctx, in);
    for (size_t i = 0; i < layers_.size(); i++) {
        g.output(ggml_cpy(ctx, layers_[i].cross_attn.key(ctx, e, nullptr), c->k[i]));
        g.output(ggml_cpy(ctx, layers_[i].cross_attn.value(ctx, e), c->v[i]));
    }
    Runner runner(backend_, 4096);
    runner.alloc(g);
    set_input(in, enc, (size_t)(Be * S * E));
    runner.compute(g);
    conds_ = std::move(c);
}

// Batch rows 0..n-1 of a device tensor whose outermost dimension d (ne order) is the batch;
// a single row is repeated.
static ggml_tensor *batch_rows(ggml_context *ctx, ggml_tensor *t, int d, int64_t n) {
    if (t->ne[d] == n) return t;
    int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
    ne[d] = n;
    if (t->ne[d] == 1) return ggml_repeat_4d(ctx, t, ne[0], ne[1], ne[2], ne[3]);
    return ggml_view_4d(ctx, t, ne[0], ne[1], ne[2], ne[3], t->nb[1], t->nb[2], t->nb[3], 0);
}

void DiT::build(int64_t B, int64_t Bx) {
    const Conditions &cd = *conds_;
    const int64_t H = hp_.hidden_size, P = hp_.patch_size, N = cd.Tp / P, A = hp_.audio_acoustic_hidden_dim;
    cached_.reset();
    auto c = std::make_unique<Cached>(backend_);
    c->B = B, c->Bx = Bx;
    Graph &g = c->graph;
    ggml_context *ctx = g.ctx();

    c->x = g.input("x_t", GGML_TYPE_F32, {Bx, cd.Tp, A});
    c->t = g.input("t", GGML_TYPE_F32, {2, B});  // row 0: 1000·t, row 1: 1000·(t − r)

    // Timestep conditioning: the t and t − r embedders are summed.
    ggml_tensor *ts = ggml_view_1d(ctx, c->t, B, 0);
    ggml_tensor *tr = ggml_view_1d(ctx, c->t, B, B * sizeof(float));
    ggml_tensor *proj_t, *proj_r;
    ggml_tensor *temb = ggml_add(ctx, time_embed_(ctx, ts, &proj_t), time_embed_r_(ctx, tr, &proj_r));
    ggml_tensor *tproj = ggml_reshape_3d(ctx, ggml_add(ctx, proj_t, proj_r), H, 6, B);  // [B, 6, H]

    // x: [B, Tp, 2·64 ‖ 64] -> [B, N, P·192] -> [B, N, H]
    ggml_tensor *xt = Bx == B ? c->x : ggml_repeat_4d(ctx, c->x, A, cd.Tp, B, 1);
    ggml_tensor *x = ggml_concat(ctx, batch_rows(ctx, cd.context, 2, B), xt, 0);
    x = proj_in_(ctx, ggml_reshape_3d(ctx, x, P * hp_.in_channels, N, B));

    // Self-attention: RoPE over token positions; even layers see |i − j| <= window only.
    for (size_t i = 0; i < layers_.size(); i++) {
        const Layer &l = layers_[i];
        ggml_tensor *mod = ggml_add(ctx, tproj, l.scale_shift_table);  // [B, 6, H]: shift, scale, gate ×2
        ggml_tensor *h = modulate(ctx, x, l.self_attn_norm, mod_row(ctx, mod, 0), mod_row(ctx, mod, 1));
        h = l.self_attn(ctx, h, cd.pos, hp_.sliding(i) ? cd.window : nullptr);
        x = ggml_add(ctx, x, ggml_mul(ctx, h, mod_row(ctx, mod, 2)));
        h = l.cross_attn_norm(ctx, x);
        h = l.cross_attn.attend(ctx, l.cross_attn.query(ctx, h, nullptr), batch_rows(ctx, cd.k[i], 3, B),
                                batch_rows(ctx, cd.v[i], 3, B), nullptr);
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

std::vector<float> DiT::step(const float *x_t, int64_t Bx, int64_t T, const float *t, int64_t B) {
    if (!conds_) throw InputError("DiT step without conditions: call set_conditions first");
    const Conditions &cd = *conds_;
    const int64_t A = hp_.audio_acoustic_hidden_dim, Tp = cd.Tp;
    if (T != cd.T) throw InputError(fmt("x_t has %lld frames, the conditions %lld", (long long)T, (long long)cd.T));
    if (B < 1 || B > cd.Be || (cd.Bs > 1 && B > cd.Bs) || (Bx != 1 && Bx != B))
        throw InputError(fmt("DiT step of batch %lld (x_t batch %lld) over conditions of batch %lld / %lld",
                             (long long)B, (long long)Bx, (long long)cd.Be, (long long)cd.Bs));
    check_finite(x_t, Bx * T * A, "x_t");
    check_finite(t, B, "t");
    if (!cached_ || cached_->B != B || cached_->Bx != Bx) build(B, Bx);
    Cached &c = *cached_;

    std::vector<float> x((size_t)(Bx * Tp * A), 0.0f);  // zero frames pad to a whole patch
    for (int64_t b = 0; b < Bx; b++) std::copy(x_t + b * T * A, x_t + (b + 1) * T * A, x.begin() + b * Tp * A);
    std::vector<float> tv(2 * B);
    for (int64_t b = 0; b < B; b++) tv[b] = 1000.0f * t[b], tv[B + b] = 0.0f;  // r = t at inference
    set_input(c.x, x.data(), x.size());
    set_input(c.t, tv.data(), tv.size());
    c.runner.compute(c.graph);
    std::vector<float> full = get_output(c.out), out((size_t)(B * T * A));
    for (int64_t b = 0; b < B; b++)
        std::copy(full.begin() + b * Tp * A, full.begin() + (b * Tp + T) * A, out.begin() + b * T * A);
    return out;
}

std::vector<float> DiT::forward(const float *x_t, const float *src, const float *mask, const float *t,
                                const float *enc, int64_t B, int64_t T, int64_t S) {
    if (B < 1) throw InputError(fmt("DiT batch must be positive, got %lld", (long long)B));
    set_conditions(enc, B, S, src, mask, B, T);
    return step(x_t, B, T, t, B);
}

}  // namespace ace

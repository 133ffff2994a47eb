// attention.cpp: attention (flash or matmul, per device and shape), the Qwen3 attention block, masks.
#include "nn/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "core/env.h"
#include "core/error.h"
#include "core/format.h"

namespace ace {

// Whether `backend`'s device runs ggml_flash_attn_ext on operands shaped, typed and strided as
// these: asked of the device (ggml_backend_supports_op) on a stand-in node in a scratch context,
// since what a kernel covers varies by device (Vulkan: head sizes that are multiples of 8; CUDA:
// a list of head sizes, strides, the mask's padding).  Answers are kept per device and signature.
static bool device_runs_flash(const Backend &backend, const ggml_tensor *q, const ggml_tensor *k,
                              const ggml_tensor *v, const ggml_tensor *mask, float scale) {
    std::string key = backend.name();
    for (const ggml_tensor *t : {q, k, v, mask}) {
        if (!t) {
            key += "|-";
            continue;
        }
        key += fmt("|%d", (int)t->type);
        for (int i = 0; i < GGML_MAX_DIMS; i++) key += fmt(",%lld:%zu", (long long)t->ne[i], t->nb[i]);
    }
    static std::mutex mu;
    static std::unordered_map<std::string, bool> known;
    {
        std::lock_guard<std::mutex> lock(mu);
        auto it = known.find(key);
        if (it != known.end()) return it->second;
    }
    ggml_init_params p = {ggml_tensor_overhead() * 8, nullptr, /*no_alloc=*/true};
    ggml_context *scratch = ggml_init(p);
    if (!scratch) throw Error("attention: could not create a scratch ggml context");
    auto stand_in = [&](const ggml_tensor *t) -> ggml_tensor * {
        if (!t) return nullptr;
        ggml_tensor *s = ggml_new_tensor(scratch, t->type, GGML_MAX_DIMS, t->ne);
        std::copy(t->nb, t->nb + GGML_MAX_DIMS, s->nb);  // views of a cache keep their strides
        return s;
    };
    ggml_tensor *o = ggml_flash_attn_ext(scratch, stand_in(q), stand_in(k), stand_in(v), stand_in(mask), scale,
                                         0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);
    const bool ok = backend.supports(o);
    ggml_free(scratch);
    std::lock_guard<std::mutex> lock(mu);
    if (known.size() > 4096) known.clear();  // a decode loop's growing key lengths: bounded
    known[key] = ok;
    return ok;
}

ggml_tensor *attention(ggml_context *ctx, ggml_tensor *q, ggml_tensor *k, ggml_tensor *v, ggml_tensor *mask,
                       float scale, const Backend &backend) {
    const int64_t d = q->ne[0], tq = q->ne[1], h = q->ne[2], b = q->ne[3];
    const env::Attn mode = env::attention();
    // The CPU runs flash attention for every shape: it is not asked.
    const bool flash = mode == env::Attn::Flash ||
                       (mode == env::Attn::Auto && (backend.is_cpu() || device_runs_flash(backend, q, k, v, mask, scale)));
    if (flash) {
        ggml_tensor *o = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);
        return ggml_reshape_3d(ctx, o, d * h, tq, b);  // o: [D, H, Tq, B]
    }
    ggml_tensor *kq = ggml_mul_mat(ctx, k, q);                           // [Tk, Tq, H, B]
    kq = ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f);
    ggml_tensor *vt = ggml_cont(ctx, ggml_permute(ctx, v, 1, 0, 2, 3));  // [Tk, D, Hkv, B]
    ggml_tensor *o = ggml_mul_mat(ctx, vt, kq);                          // [D, Tq, H, B]
    o = ggml_cont(ctx, ggml_permute(ctx, o, 0, 2, 1, 3));                // [D, H, Tq, B]
    return ggml_reshape_3d(ctx, o, d * h, tq, b);
}

void Attention::load(Weights &w, const std::string &p, const Dims &d, bool has_bias) {
    n_head = d.n_head;
    n_kv_head = d.n_kv_head;
    head_dim = d.head_dim;
    backend = w.backend().get();
    rope_theta = d.rope_theta;
    q_proj.load(w, p + "q_proj", d.hidden, n_head * head_dim, has_bias);
    k_proj.load(w, p + "k_proj", d.hidden, n_kv_head * head_dim, has_bias);
    v_proj.load(w, p + "v_proj", d.hidden, n_kv_head * head_dim, has_bias);
    o_proj.load(w, p + "o_proj", n_head * head_dim, d.hidden, has_bias);
    q_norm.load(w, p + "q_norm.weight", head_dim, d.eps);
    k_norm.load(w, p + "k_norm.weight", head_dim, d.eps);
}

ggml_tensor *Attention::query(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos) const {
    ggml_tensor *q = ggml_reshape_4d(ctx, q_proj(ctx, x), head_dim, n_head, x->ne[1], x->ne[2]);
    q = q_norm(ctx, q);
    return pos ? rope_neox(ctx, q, pos, rope_theta) : q;
}

ggml_tensor *Attention::key(ggml_context *ctx, ggml_tensor *src, ggml_tensor *pos) const {
    ggml_tensor *k = ggml_reshape_4d(ctx, k_proj(ctx, src), head_dim, n_kv_head, src->ne[1], src->ne[2]);
    k = k_norm(ctx, k);
    return pos ? rope_neox(ctx, k, pos, rope_theta) : k;
}

ggml_tensor *Attention::value(ggml_context *ctx, ggml_tensor *src) const {
    return ggml_reshape_4d(ctx, v_proj(ctx, src), head_dim, n_kv_head, src->ne[1], src->ne[2]);
}

ggml_tensor *Attention::attend(ggml_context *ctx, ggml_tensor *q, ggml_tensor *k, ggml_tensor *v,
                                   ggml_tensor *mask) const {
    // [D, H, T, B] -> [D, T, H, B]: heads become the batch dimension of the attention.
    q = ggml_permute(ctx, q, 0, 2, 1, 3);
    k = ggml_permute(ctx, k, 0, 2, 1, 3);
    v = ggml_permute(ctx, v, 0, 2, 1, 3);
    ggml_tensor *o = attention(ctx, q, k, v, mask, 1.0f / std::sqrt((float)head_dim), *backend);
    return o_proj(ctx, o);
}

ggml_tensor *Attention::operator()(ggml_context *ctx, ggml_tensor *x, ggml_tensor *pos, ggml_tensor *mask) const {
    return attend(ctx, query(ctx, x, pos), key(ctx, x, pos), value(ctx, x), mask);
}

std::vector<ggml_fp16_t> make_mask(int64_t tq, int64_t tk, MaskKind kind, int64_t window,
                                   const std::vector<uint8_t> &key_valid) {
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), neg = ggml_fp32_to_fp16(-INFINITY);
    std::vector<ggml_fp16_t> m(tq * tk);
    for (int64_t i = 0; i < tq; i++) {
        bool any = false;
        for (int64_t j = 0; j < tk; j++) {
            bool ok = key_valid.empty() || key_valid[j];
            if (kind == MaskKind::Causal) ok = ok && j <= i + (tk - tq);  // queries are the last tq of tk positions
            if (kind == MaskKind::Window) ok = ok && std::llabs(i - j) <= window;
            m[i * tk + j] = ok ? zero : neg;
            any = any || ok;
        }
        if (!any) std::fill(m.begin() + i * tk, m.begin() + (i + 1) * tk, zero);
    }
    return m;
}

}  // namespace ace

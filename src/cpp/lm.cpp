// lm.cpp: Qwen3ForCausalLM graph with a multi-sequence KV cache.
#include "lm.h"

#include <cmath>

#include "text_encoder.h"

namespace ace {

LM::LM(const std::string &path, std::shared_ptr<Backend> backend)
    : file_(std::make_shared<GGUFFile>(path)), w_(file_, backend), runner_(backend) {
    file_->expect_architecture("acestep-lm");
    w_.keep_bf16();  // decode reads each weight once per token: BF16 dot products were faster there
    dims_ = qwen3_dims(*file_, "model.layers.");
    embed_tokens_ = load_embedding(w_, "model.embed_tokens.weight", dims_.hidden, vocab_);
    // Published files say whether the head is tied; a file without lm_head.weight can only be tied.
    const bool tie = file_->get_bool("acestep.tie_word_embeddings", !w_.has("lm_head.weight"));
    if (!tie && !w_.has("lm_head.weight"))
        throw FileError(fmt("%s: acestep.tie_word_embeddings is false but lm_head.weight is missing", path.c_str()));
    lm_head_ = tie ? embed_tokens_ : w_.get("lm_head.weight", {vocab_, dims_.hidden});
    const int n = count_layers(*file_, "model.layers.");
    layers_.resize(n);
    for (int i = 0; i < n; i++) layers_[i].load(w_, "model.layers." + std::to_string(i) + ".", dims_);
    norm_.load(w_, "model.norm.weight", dims_.hidden, dims_.eps);
    w_.load();
}

LM::~LM() = default;

void LM::reset(int n_seq, int64_t n_ctx, ggml_type kv_type) {
    if (n_seq < 1 || n_seq > 64) throw InputError(fmt("n_seq = %d must be in 1..64", n_seq));
    if (n_ctx < 1 || n_ctx > (1 << 20)) throw InputError(fmt("n_ctx = %lld must be in 1..1048576", (long long)n_ctx));
    if (kv_type != GGML_TYPE_F16 && kv_type != GGML_TYPE_F32) throw InputError("the KV cache type must be f16 or f32");
    cache_.reset();
    k_.clear();
    v_.clear();
    len_.clear();
    n_ctx_ = 0;
    auto cache = std::make_unique<DeviceTensors>(runner_.backend(), 2 * layers_.size());
    for (size_t l = 0; l < layers_.size(); l++) {
        k_.push_back(cache->add("cache_k", kv_type, {n_seq, n_ctx, dims_.n_kv_head, dims_.head_dim}));
        v_.push_back(cache->add("cache_v", kv_type, {n_seq, n_ctx, dims_.n_kv_head, dims_.head_dim}));
    }
    try {
        cache->alloc(fmt("a KV cache of %d x %lld positions", n_seq, (long long)n_ctx).c_str());
    } catch (...) {
        k_.clear();
        v_.clear();
        throw;
    }
    cache_ = std::move(cache);
    len_.assign(n_seq, 0);
    n_ctx_ = n_ctx;
}

int64_t LM::length(int seq) const {
    if (seq < 0 || seq >= n_seq()) throw InputError(fmt("sequence %d does not exist (have %d)", seq, n_seq()));
    return len_[seq];
}

std::vector<float> LM::prefill(int seq, const std::vector<int32_t> &ids) {
    if (len_.empty()) throw InputError("no KV cache: call reset() first");
    length(seq);
    return forward(ids, std::vector<int>(1, seq), 0, vocab_);
}

std::vector<float> LM::decode(const std::vector<int32_t> &tokens, int64_t lo, int64_t hi) {
    if (len_.empty()) throw InputError("no KV cache: call reset() first");
    if ((int)tokens.size() != n_seq())
        throw InputError(fmt("decode takes one token per sequence: got %zu for %d sequences", tokens.size(), n_seq()));
    if (hi < 0) hi = vocab_;
    if (lo < 0 || lo >= hi || hi > vocab_)
        throw InputError(fmt("logit rows [%lld, %lld) are not a range inside the vocabulary of %lld", (long long)lo,
                             (long long)hi, (long long)vocab_));
    std::vector<int> seqs(n_seq());
    for (int s = 0; s < n_seq(); s++) seqs[s] = s;
    return forward(tokens, seqs, lo, hi);
}

std::vector<float> LM::extend(const std::vector<int32_t> &ids, int64_t lo, int64_t hi) {
    if (len_.empty()) throw InputError("no KV cache: call reset() first");
    if (ids.empty()) throw InputError("extend takes at least one token");
    if (hi < 0) hi = vocab_;
    if (lo < 0 || lo >= hi || hi > vocab_)
        throw InputError(fmt("logit rows [%lld, %lld) are not a range inside the vocabulary of %lld", (long long)lo,
                             (long long)hi, (long long)vocab_));
    std::vector<int> seqs(n_seq());
    std::vector<int32_t> all;
    for (int s = 0; s < n_seq(); s++) {
        seqs[s] = s;
        all.insert(all.end(), ids.begin(), ids.end());
    }
    return forward(all, seqs, lo, hi);
}

std::vector<float> LM::forward(const std::vector<int32_t> &ids, const std::vector<int> &seqs, int64_t lo,
                               int64_t hi) {
    check_token_ids(ids, vocab_, "token ids");
    // Every sequence takes t consecutive ids of the batch.
    const int64_t ns = (int64_t)seqs.size(), t = (int64_t)ids.size() / ns;
    for (int s : seqs)
        if (len_[s] + t > n_ctx_)
            throw InputError(fmt("sequence %d would hold %lld tokens but the cache has room for %lld", s,
                                 (long long)(len_[s] + t), (long long)n_ctx_));
    const int64_t D = dims_.head_dim, H = dims_.n_head, Hkv = dims_.n_kv_head, n = (int64_t)ids.size();

    Graph g;
    ggml_context *ctx = g.ctx();
    ggml_tensor *tok = g.input("ids", GGML_TYPE_I32, {n});
    ggml_tensor *pos = g.input("pos", GGML_TYPE_I32, {n});
    // A single new token sees the whole cache; several need a causal mask per sequence (lengths differ).
    std::vector<ggml_tensor *> masks(ns, nullptr);
    if (t > 1)
        for (int64_t i = 0; i < ns; i++) masks[i] = g.input("mask", GGML_TYPE_F16, {t, len_[seqs[i]] + t});
    ggml_tensor *x = ggml_get_rows(ctx, embed_tokens_, tok);  // [C, n]: the n tokens side by side
    const float scale = 1.0f / std::sqrt((float)D);
    for (size_t l = 0; l < layers_.size(); l++) {
        const Qwen3Layer &L = layers_[l];
        const Attention &A = L.self_attn;
        ggml_tensor *h = L.input_layernorm(ctx, x);
        // [D, H, n, 1]: RoPE reads one position per token, so sequences share dimension 2.
        ggml_tensor *q = A.query(ctx, h, pos), *k = A.key(ctx, h, pos), *v = A.value(ctx, h);
        ggml_tensor *o = nullptr;
        for (int64_t i = 0; i < ns; i++) {
            const int s = seqs[i];
            const int64_t p0 = len_[s], off = i * t;
            ggml_tensor *cache[2] = {k_[l], v_[l]}, *src[2] = {k, v}, *kv[2];
            for (int c = 0; c < 2; c++) {
                ggml_tensor *C = cache[c];
                ggml_tensor *dst = ggml_view_3d(ctx, C, D, Hkv, t, C->nb[1], C->nb[2], p0 * C->nb[2] + s * C->nb[3]);
                ggml_tensor *part = ggml_view_3d(ctx, src[c], D, Hkv, t, src[c]->nb[1], src[c]->nb[2], off * src[c]->nb[2]);
                // Expanded now so that the write precedes the attention reading the cache.
                ggml_build_forward_expand(g.graph(), ggml_cpy(ctx, part, dst));
                // [D, Hkv, Tk] -> [D, Tk, Hkv]: heads are the batch of the attention.
                kv[c] = ggml_permute(ctx, ggml_view_3d(ctx, C, D, Hkv, p0 + t, C->nb[1], C->nb[2], s * C->nb[3]), 0, 2,
                                     1, 3);
            }
            ggml_tensor *qs = ggml_view_3d(ctx, q, D, H, t, q->nb[1], q->nb[2], off * q->nb[2]);
            ggml_tensor *os = attention(ctx, ggml_permute(ctx, qs, 0, 2, 1, 3), kv[0], kv[1], masks[i], scale);
            o = o ? ggml_concat(ctx, o, os, 1) : os;  // [D*H, t] per sequence
        }
        x = ggml_add(ctx, x, A.o_proj(ctx, ggml_reshape_2d(ctx, o, D * H, n)));
        x = ggml_add(ctx, x, L.mlp(ctx, L.post_attention_layernorm(ctx, x)));
    }
    // Only each sequence's last position.
    if (t > 1) x = ggml_cont(ctx, ggml_view_2d(ctx, x, x->ne[0], ns, t * x->nb[1], (t - 1) * x->nb[1]));
    // Only the head rows asked for: in the audio-code phase 64000 of the 215669.
    ggml_tensor *head = lo == 0 && hi == vocab_ ? lm_head_
                                                : ggml_view_2d(ctx, lm_head_, lm_head_->ne[0], hi - lo,
                                                               lm_head_->nb[1], lo * lm_head_->nb[1]);
    ggml_tensor *logits = ggml_mul_mat(ctx, head, norm_(ctx, x));  // [hi - lo, ns]
    g.output(logits);
    runner_.alloc(g);
    set_input(tok, ids.data(), ids.size());
    std::vector<int32_t> p(n);
    for (int64_t i = 0; i < n; i++) p[i] = (int32_t)(len_[seqs[i / t]] + i % t);
    set_input(pos, p.data(), p.size());
    for (int64_t i = 0; i < ns; i++)
        if (masks[i]) {
            auto m = make_mask(t, len_[seqs[i]] + t, MaskKind::Causal, 0);
            ggml_backend_tensor_set(masks[i], m.data(), 0, m.size() * sizeof(ggml_fp16_t));
        }
    runner_.compute(g);
    for (int s : seqs) len_[s] += t;
    return get_output(logits);
}

}  // namespace ace

// lm.cpp: Qwen3ForCausalLM graph with a multi-sequence KV cache.
#include "models/lm.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/format.h"

namespace ace {

// Attention reads the cache over a length rounded up to this, under a mask, so that the decode
// graph keeps its shape for this many steps: it is rebuilt and reallocated once per bucket.
constexpr int64_t KV_BUCKET = 256;

struct LM::Step {
    Graph g;
    int64_t t = 0, n_kv = 0, lo = 0, hi = 0;
    int seq0 = 0, ns = 0;
    // ids, pos: I32 [ns * t]; rows: I64 [ns * t], each token's cache row (s * n_ctx + position);
    // mask: F16 [ns, 1, t, n_kv] (torch order); logits: [ns, hi - lo].
    ggml_tensor *ids = nullptr, *pos = nullptr, *rows = nullptr, *mask = nullptr, *logits = nullptr;
    bool fits(int64_t t_, int seq0_, int ns_, int64_t n_kv_, int64_t lo_, int64_t hi_) const {
        return t == t_ && seq0 == seq0_ && ns == ns_ && n_kv == n_kv_ && lo == lo_ && hi == hi_;
    }
};

LM::LM(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend)
    : hp_(read_lm_hparams(*file)), dims_(hp_.dims()), w_(file, backend), runner_(backend) {
    w_.keep_bf16();  // decode reads each weight once per token: BF16 dot products were faster there
    const int64_t vocab = hp_.vocab_size;
    embed_tokens_ = w_.get("model.embed_tokens.weight", {vocab, dims_.hidden});
    lm_head_ = hp_.tie_word_embeddings ? embed_tokens_ : w_.get("lm_head.weight", {vocab, dims_.hidden});
    layers_.resize(hp_.num_hidden_layers);
    for (size_t i = 0; i < layers_.size(); i++) layers_[i].load(w_, "model.layers." + std::to_string(i) + ".", dims_);
    norm_.load(w_, "model.norm.weight", dims_.hidden, dims_.eps);
    w_.load();
    std::vector<Linear *> lins;
    for (Qwen3Layer &l : layers_) l.linears(lins);
    int8_ = int8_if_asked(w_, lins);
}

LM::~LM() = default;

void LM::reset(int n_seq, int64_t n_ctx, ggml_type kv_type) {
    if (n_seq < 1 || n_seq > 64) throw InputError(fmt("n_seq = %d must be in 1..64", n_seq));
    if (n_ctx < 1 || n_ctx > (1 << 20)) throw InputError(fmt("n_ctx = %lld must be in 1..1048576", (long long)n_ctx));
    if (kv_type != GGML_TYPE_F16 && kv_type != GGML_TYPE_F32) throw InputError("the KV cache type must be f16 or f32");
    step_.reset();  // its graph writes the old cache
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
    zeroed_ = 0;
}

int64_t LM::length(int seq) const {
    if (seq < 0 || seq >= n_seq()) throw InputError(fmt("sequence %d does not exist (have %d)", seq, n_seq()));
    return len_[seq];
}

std::vector<float> LM::prefill(int seq, const std::vector<int32_t> &ids) {
    if (len_.empty()) throw InputError("no KV cache: call reset() first");
    length(seq);
    return forward(ids, seq, 1, 0, hp_.vocab_size);
}

std::vector<float> LM::decode(const std::vector<int32_t> &tokens, int64_t lo, int64_t hi) {
    if (len_.empty()) throw InputError("no KV cache: call reset() first");
    if ((int)tokens.size() != n_seq())
        throw InputError(fmt("decode takes one token per sequence: got %zu for %d sequences", tokens.size(), n_seq()));
    if (hi < 0) hi = hp_.vocab_size;
    if (lo < 0 || lo >= hi || hi > hp_.vocab_size)
        throw InputError(fmt("logit rows [%lld, %lld) are not a range inside the vocabulary of %lld", (long long)lo,
                             (long long)hi, (long long)hp_.vocab_size));
    return forward(tokens, 0, n_seq(), lo, hi);
}

std::vector<float> LM::extend(const std::vector<int32_t> &ids, int64_t lo, int64_t hi) {
    if (len_.empty()) throw InputError("no KV cache: call reset() first");
    if (ids.empty()) throw InputError("extend takes at least one token");
    if (hi < 0) hi = hp_.vocab_size;
    if (lo < 0 || lo >= hi || hi > hp_.vocab_size)
        throw InputError(fmt("logit rows [%lld, %lld) are not a range inside the vocabulary of %lld", (long long)lo,
                             (long long)hi, (long long)hp_.vocab_size));
    std::vector<int32_t> all;
    for (int s = 0; s < n_seq(); s++) all.insert(all.end(), ids.begin(), ids.end());
    return forward(all, 0, n_seq(), lo, hi);
}

std::unique_ptr<LM::Step> LM::build(int64_t t, int seq0, int ns, int64_t n_kv, int64_t lo, int64_t hi) {
    const int64_t D = dims_.head_dim, H = dims_.n_head, Hkv = dims_.n_kv_head, n = ns * t;
    auto st = std::make_unique<Step>();
    st->t = t, st->seq0 = seq0, st->ns = ns, st->n_kv = n_kv, st->lo = lo, st->hi = hi;
    Graph &g = st->g;
    ggml_context *ctx = g.ctx();
    st->ids = g.input("ids", GGML_TYPE_I32, {n});
    st->pos = g.input("pos", GGML_TYPE_I32, {n});
    st->rows = g.input("rows", GGML_TYPE_I64, {n});
    st->mask = g.input("mask", GGML_TYPE_F16, {ns, 1, t, n_kv});
    ggml_tensor *x = ggml_get_rows(ctx, embed_tokens_, st->ids);  // [C, n]: sequence-major
    const float scale = 1.0f / std::sqrt((float)D);
    for (size_t l = 0; l < layers_.size(); l++) {
        const Qwen3Layer &L = layers_[l];
        const Attention &A = L.self_attn;
        ggml_tensor *h = L.input_layernorm(ctx, x);
        // [D, H, n, 1]: RoPE reads one position per token.
        ggml_tensor *q = A.query(ctx, h, st->pos), *k = A.key(ctx, h, st->pos), *v = A.value(ctx, h);
        ggml_tensor *cache[2] = {k_[l], v_[l]}, *src[2] = {k, v}, *kv[2];
        for (int c = 0; c < 2; c++) {
            ggml_tensor *C = cache[c];
            // One cache row per token and position: [D * Hkv, n_ctx * n_seq] <- [D * Hkv, n].
            ggml_tensor *dst = ggml_reshape_2d(ctx, C, D * Hkv, C->ne[2] * C->ne[3]);
            // Expanded now so that the write precedes the attention reading the cache.
            ggml_build_forward_expand(g.graph(), ggml_set_rows(ctx, dst, ggml_reshape_2d(ctx, src[c], D * Hkv, n),
                                                               st->rows));
            // [D, Hkv, n_kv, ns] -> [D, n_kv, Hkv, ns]: heads are the batch of the attention.
            kv[c] = ggml_permute(ctx, ggml_view_4d(ctx, C, D, Hkv, n_kv, ns, C->nb[1], C->nb[2], C->nb[3],
                                                   seq0 * C->nb[3]),
                                 0, 2, 1, 3);
        }
        q = ggml_permute(ctx, ggml_reshape_4d(ctx, q, D, H, t, ns), 0, 2, 1, 3);  // [D, t, H, ns]
        ggml_tensor *o = attention(ctx, q, kv[0], kv[1], st->mask, scale, *runner_.backend());  // [D * H, t, ns]
        x = ggml_add(ctx, x, A.o_proj(ctx, ggml_reshape_2d(ctx, o, D * H, n)));
        x = ggml_add(ctx, x, L.mlp(ctx, L.post_attention_layernorm(ctx, x)));
    }
    // Only each sequence's last position.
    if (t > 1) x = ggml_cont(ctx, ggml_view_2d(ctx, x, x->ne[0], ns, t * x->nb[1], (t - 1) * x->nb[1]));
    // Only the head rows asked for: in the audio-code phase 64000 of the 215669.
    ggml_tensor *head = lm_head_;
    if (lo != 0 || hi != hp_.vocab_size)
        head = ggml_view_2d(ctx, lm_head_, lm_head_->ne[0], hi - lo, lm_head_->nb[1], lo * lm_head_->nb[1]);
    st->logits = ggml_mul_mat(ctx, head, norm_(ctx, x));  // [hi - lo, ns]
    g.output(st->logits);
    return st;
}

void LM::zero_kv_to(int64_t n_kv) {
    if (n_kv <= zeroed_) return;
    for (size_t l = 0; l < layers_.size(); l++)
        for (ggml_tensor *C : {k_[l], v_[l]})
            for (int64_t s = 0; s < C->ne[3]; s++)
                ggml_backend_tensor_memset(C, 0, s * C->nb[3] + zeroed_ * C->nb[2], (n_kv - zeroed_) * C->nb[2]);
    zeroed_ = n_kv;
}

std::vector<float> LM::forward(const std::vector<int32_t> &ids, int seq0, int ns, int64_t lo, int64_t hi) {
    check_token_ids(ids, hp_.vocab_size, "token ids");
    // Every sequence takes t consecutive ids of the batch.
    const int64_t t = (int64_t)ids.size() / ns, n = (int64_t)ids.size();
    int64_t longest = 0;
    for (int s = seq0; s < seq0 + ns; s++) {
        if (len_[s] + t > n_ctx_)
            throw InputError(fmt("sequence %d would hold %lld tokens but the cache has room for %lld", s,
                                 (long long)(len_[s] + t), (long long)n_ctx_));
        longest = std::max(longest, len_[s] + t);
    }
    const int64_t n_kv = std::min((longest + KV_BUCKET - 1) / KV_BUCKET * KV_BUCKET, n_ctx_);
    if (!step_ || !step_->fits(t, seq0, ns, n_kv, lo, hi)) {
        step_.reset();
        zero_kv_to(n_kv);
        auto st = build(t, seq0, ns, n_kv, lo, hi);
        runner_.alloc(st->g);
        step_ = std::move(st);
    }
    std::vector<int32_t> pos(n);
    std::vector<int64_t> rows(n);
    // Query i of sequence s sees the positions up to its own: len_[s] + i.
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), neg = ggml_fp32_to_fp16(-INFINITY);
    std::vector<ggml_fp16_t> mask(n * n_kv, neg);
    for (int64_t i = 0; i < n; i++) {
        const int s = seq0 + (int)(i / t);
        pos[i] = (int32_t)(len_[s] + i % t);
        rows[i] = s * n_ctx_ + pos[i];
        std::fill(mask.begin() + i * n_kv, mask.begin() + i * n_kv + pos[i] + 1, zero);
    }
    set_input(step_->ids, ids.data(), ids.size());
    set_input(step_->pos, pos.data(), pos.size());
    set_input(step_->rows, rows.data(), rows.size());
    set_input(step_->mask, mask.data(), mask.size());
    runner_.compute(step_->g);
    for (int s = seq0; s < seq0 + ns; s++) len_[s] += t;
    return get_output(step_->logits);
}

}  // namespace ace

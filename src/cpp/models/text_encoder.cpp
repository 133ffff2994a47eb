// text_encoder.cpp: Qwen3 text encoder graph.
#include "models/text_encoder.h"

#include "core/error.h"
#include "core/format.h"

namespace ace {

TextEncoder::TextEncoder(const std::string &path, std::shared_ptr<Backend> backend)
    : file_(std::make_shared<GGUFFile>(path)), w_(file_, backend), runner_(backend) {
    file_->expect_architecture("acestep-text-enc");
    dims_ = qwen3_dims(*file_, "layers.");
    embed_tokens_ = load_embedding(w_, "embed_tokens.weight", dims_.hidden, vocab_);
    int n = count_layers(*file_, "layers.");
    layers_.resize(n);
    for (int i = 0; i < n; i++) layers_[i].load(w_, "layers." + std::to_string(i) + ".", dims_);
    norm_.load(w_, "norm.weight", dims_.hidden, dims_.eps);
    w_.load();
}

std::vector<float> TextEncoder::run(const std::vector<int32_t> &ids, bool with_layers) {
    check_token_ids(ids, vocab_, "token ids");
    const int64_t t = (int64_t)ids.size();
    Graph g;
    ggml_context *ctx = g.ctx();
    ggml_tensor *tok = g.input("ids", GGML_TYPE_I32, {t});
    ggml_tensor *x = ggml_get_rows(ctx, embed_tokens_, tok);  // [C, T]
    ggml_tensor *pos = nullptr, *mask = nullptr;
    if (with_layers) {
        pos = g.input("pos", GGML_TYPE_I32, {t});
        mask = g.input("mask", GGML_TYPE_F16, {t, t});
        for (auto &layer : layers_) x = layer(ctx, x, pos, mask);
        x = norm_(ctx, x);
    }
    g.output(x);
    runner_.alloc(g);
    set_input(tok, ids.data(), ids.size());
    if (with_layers) {
        auto p = iota(t);
        set_input(pos, p.data(), p.size());
        auto m = make_mask(t, t, MaskKind::Causal, 0);
        set_input(mask, m.data(), m.size());
    }
    runner_.compute(g);
    return get_output(x);
}

std::vector<float> TextEncoder::encode(const std::vector<int32_t> &ids) { return run(ids, true); }
std::vector<float> TextEncoder::embed(const std::vector<int32_t> &ids) { return run(ids, false); }

}  // namespace ace

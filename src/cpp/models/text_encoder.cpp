// text_encoder.cpp: Qwen3 text encoder graph.
#include "models/text_encoder.h"

#include "core/error.h"

namespace ace {

TextEncoder::TextEncoder(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend)
    : hp_(read_text_enc_hparams(*file)), w_(file, backend), runner_(backend) {
    const Dims d = hp_.dims();
    embed_tokens_ = w_.get("embed_tokens.weight", {hp_.vocab_size, d.hidden});
    layers_.resize(hp_.num_hidden_layers);
    for (size_t i = 0; i < layers_.size(); i++) layers_[i].load(w_, "layers." + std::to_string(i) + ".", d);
    norm_.load(w_, "norm.weight", d.hidden, d.eps);
    w_.load();
    std::vector<Linear *> lins;
    for (Qwen3Layer &l : layers_) l.linears(lins);
    int8_ = int8_if_asked(w_, lins);
}

std::vector<float> TextEncoder::run(const std::vector<int32_t> &ids, bool with_layers) {
    check_token_ids(ids, hp_.vocab_size, "token ids");
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

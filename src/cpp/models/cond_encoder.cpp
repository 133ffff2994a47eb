// cond_encoder.cpp: condition encoder graph and sequence packing.
#include "models/cond_encoder.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/format.h"
#include "core/hparams.h"

namespace ace {

ConditionEncoder::ConditionEncoder(std::shared_ptr<GGUFFile> dit, std::shared_ptr<GGUFFile> text,
                                   std::shared_ptr<Backend> backend)
    : hp_(read_dit_hparams(*dit)), text_hp_(read_text_enc_hparams(*text)), w_(dit, backend), text_w_(text, backend),
      runner_(backend) {
    if (!hp_.has_encoder)
        throw FileError(fmt("%s: the file holds no condition encoder (no encoder.* tensors)", dit->path().c_str()));
    if (text_hp_.hidden_size != hp_.text_hidden_dim)
        throw FileError(fmt("%s: the text encoder is %lld wide, but the condition encoder in %s takes %lld-dim text "
                            "features", text->path().c_str(), (long long)text_hp_.hidden_size, dit->path().c_str(),
                            (long long)hp_.text_hidden_dim));
    const Dims d = hp_.encoder_dims();
    text_projector_.load(w_, "encoder.text_projector", hp_.text_hidden_dim, d.hidden, false);
    lyric_.load(w_, "encoder.lyric_encoder.", hp_.text_hidden_dim, d,
                hp_.sliding_layers(hp_.num_lyric_encoder_hidden_layers), hp_.sliding_window);
    timbre_.load(w_, "encoder.timbre_encoder.", hp_.timbre_hidden_dim, d,
                 hp_.sliding_layers(hp_.num_timbre_encoder_hidden_layers), hp_.sliding_window);
    if (hp_.timbre_cls) timbre_cls_ = w_.get("encoder.timbre_encoder.special_token", {d.hidden}, Store::F32);
    embed_table_ = text_w_.get("embed_tokens.weight", {text_hp_.vocab_size, text_hp_.hidden_size});
    null_ = dit->read_f32("null_condition_emb");
    silence_ = dit->read_f32("silence_latent");  // its shape checked by read_dit_hparams
    w_.load();
    text_w_.load();
    std::vector<Linear *> lins = {&text_projector_};
    lyric_.linears(lins);
    timbre_.linears(lins);
    int8_ = int8_if_asked(w_, lins);
}

// Concatenates a and b (rows of width c) with their masks, then moves valid rows first,
// keeping order within valid and within padded rows (torch.argsort(stable=True) on the mask).
static void pack(std::vector<float> &a, std::vector<uint8_t> &ma, const std::vector<float> &b,
                 const std::vector<uint8_t> &mb, int64_t c) {
    std::vector<float> cat = a;
    cat.insert(cat.end(), b.begin(), b.end());
    std::vector<uint8_t> mcat = ma;
    mcat.insert(mcat.end(), mb.begin(), mb.end());
    std::vector<size_t> order(mcat.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return mcat[x] > mcat[y]; });
    a.resize(cat.size());
    size_t n_valid = 0;
    for (size_t i = 0; i < order.size(); i++) {
        std::memcpy(a.data() + i * c, cat.data() + order[i] * c, c * sizeof(float));
        n_valid += mcat[i] ? 1 : 0;
    }
    ma.assign(order.size(), 0);
    std::fill(ma.begin(), ma.begin() + n_valid, 1);
}

static std::vector<uint8_t> mask_or_ones(const std::vector<uint8_t> &m, size_t n, const char *what) {
    if (m.empty()) return std::vector<uint8_t>(n, 1);
    if (m.size() != n) throw InputError(fmt("%s has %zu entries for %zu tokens", what, m.size(), n));
    if (std::none_of(m.begin(), m.end(), [](uint8_t v) { return v != 0; }))
        throw InputError(fmt("%s marks every token as padding", what));
    std::vector<uint8_t> out(n);
    for (size_t i = 0; i < n; i++) out[i] = m[i] ? 1 : 0;
    return out;
}

ConditionEncoder::Output ConditionEncoder::encode(const std::vector<float> &text_hidden,
                                                  const std::vector<uint8_t> &text_mask_in,
                                                  const std::vector<int32_t> &lyric_ids,
                                                  const std::vector<uint8_t> &lyric_mask_in,
                                                  const std::vector<float> &refer_in) {
    const int64_t text_dim = hp_.text_hidden_dim, timbre_dim = hp_.timbre_hidden_dim, hidden = hp_.encoder_hidden_size;
    if (text_hidden.empty() || text_hidden.size() % text_dim != 0)
        throw InputError(fmt("text hidden states must be [T, %lld] with T >= 1, got %zu values",
                             (long long)text_dim, text_hidden.size()));
    const int64_t tt = (int64_t)text_hidden.size() / text_dim;
    check_token_ids(lyric_ids, text_hp_.vocab_size, "lyric token ids");
    const int64_t tl = (int64_t)lyric_ids.size();
    auto text_mask = mask_or_ones(text_mask_in, tt, "text mask");
    auto lyric_mask = mask_or_ones(lyric_mask_in, tl, "lyric mask");
    const std::vector<float> *refer = &refer_in;
    std::vector<float> silence_head;
    if (refer_in.empty()) {
        silence_head.assign(silence_.begin(), silence_.begin() + hp_.timbre_fix_frame * timbre_dim);
        refer = &silence_head;
    } else if (refer_in.size() % timbre_dim != 0) {
        throw InputError(fmt("reference latent must be [T, %lld], got %zu values", (long long)timbre_dim,
                             refer_in.size()));
    }
    const int64_t tr = (int64_t)refer->size() / timbre_dim;
    const int64_t ts = tr + (timbre_cls_ ? 1 : 0);  // the timbre encoder's sequence: [CLS] + frames on XL

    Graph g;
    ggml_context *ctx = g.ctx();
    // text: [text_dim, Tt] -> [H, Tt]
    ggml_tensor *text_in = g.input("text", GGML_TYPE_F32, {tt, text_dim});
    ggml_tensor *text = text_projector_(ctx, text_in);
    // lyric: ids [Tl] -> [text_dim, Tl] -> [H, Tl]
    ggml_tensor *ids = g.input("lyric_ids", GGML_TYPE_I32, {tl});
    ggml_tensor *pos_l = g.input("lyric_pos", GGML_TYPE_I32, {tl});
    ggml_tensor *win_l = g.input("lyric_window_mask", GGML_TYPE_F16, {tl, tl});
    ggml_tensor *full_l = g.input("lyric_full_mask", GGML_TYPE_F16, {tl, tl});
    ggml_tensor *lyric = lyric_.embed_tokens(ctx, ggml_get_rows(ctx, embed_table_, ids));
    lyric = lyric_.layers_and_norm(ctx, lyric, pos_l, win_l, full_l);
    // timbre: [timbre_dim, Tr] -> [H, Tr] (XL: the CLS token prepended after the projection, as
    // upstream's XL AceStepTimbreEncoder.forward, acestep/models/xl_turbo/modeling_acestep_v15_xl_turbo.py
    // @ 3450c05: RoPE positions 0..Tr, sliding and full layers over Tr + 1) -> position 0 [H, 1].
    ggml_tensor *ref = g.input("refer", GGML_TYPE_F32, {tr, timbre_dim});
    ggml_tensor *pos_r = g.input("refer_pos", GGML_TYPE_I32, {ts});
    ggml_tensor *win_r = g.input("refer_window_mask", GGML_TYPE_F16, {ts, ts});
    ggml_tensor *timbre_in = timbre_.embed_tokens(ctx, ref);
    if (timbre_cls_) timbre_in = ggml_concat(ctx, ggml_reshape_2d(ctx, timbre_cls_, hidden, 1), timbre_in, 1);
    ggml_tensor *timbre = timbre_.layers_and_norm(ctx, timbre_in, pos_r, win_r, nullptr, 1);  // pooled: position 0
    g.output(text);
    g.output(lyric);
    g.output(timbre);
    runner_.alloc(g);

    set_input(text_in, text_hidden.data(), text_hidden.size());
    set_input(ids, lyric_ids.data(), lyric_ids.size());
    auto pl = iota(tl), pr = iota(ts);
    set_input(pos_l, pl.data(), pl.size());
    set_input(pos_r, pr.data(), pr.size());
    auto set_mask = [](ggml_tensor *t, const std::vector<ggml_fp16_t> &m) {
        set_input(t, m.data(), m.size());
    };
    set_mask(win_l, make_mask(tl, tl, MaskKind::Window, lyric_.window, lyric_mask));
    set_mask(full_l, make_mask(tl, tl, MaskKind::Full, 0, lyric_mask));
    set_mask(win_r, make_mask(ts, ts, MaskKind::Window, timbre_.window));
    set_input(ref, refer->data(), refer->size());
    runner_.compute(g);

    Output out;
    out.states = get_output(lyric);
    out.mask = lyric_mask;
    pack(out.states, out.mask, get_output(timbre), {1}, hidden);
    pack(out.states, out.mask, get_output(text), text_mask, hidden);
    return out;
}

}  // namespace ace

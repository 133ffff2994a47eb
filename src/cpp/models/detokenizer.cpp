// detokenizer.cpp: FSQ decode on the host, then the detokenizer graph.
#include "models/detokenizer.h"

#include "core/error.h"
#include "core/format.h"
#include "core/hparams.h"

namespace ace {

Detokenizer::Detokenizer(std::shared_ptr<GGUFFile> dit, std::shared_ptr<Backend> backend)
    : hp_(read_dit_hparams(*dit)), w_(dit, backend), runner_(backend) {
    if (!hp_.has_detokenizer)
        throw FileError(fmt("%s: the file holds no detokenizer (no detokenizer.* tensors)", dit->path().c_str()));
    const Dims d = hp_.tokenizer_dims();
    const int64_t levels = (int64_t)hp_.fsq_input_levels.size();
    project_out_.load(w_, "tokenizer.quantizer.project_out", levels, d.hidden, true);
    stack_.load(w_, "detokenizer.", d.hidden, d, hp_.sliding_layers(hp_.num_detokenizer_hidden_layers),
                hp_.sliding_window);
    special_tokens_ = w_.get("detokenizer.special_tokens", {hp_.pool_window_size, d.hidden}, Store::F32);
    proj_out_.load(w_, "detokenizer.proj_out", d.hidden, hp_.audio_acoustic_hidden_dim, true);
    w_.load();
    std::vector<Linear *> lins = {&project_out_, &proj_out_};
    stack_.linears(lins);
    int8_ = int8_if_asked(w_, lins);
}

std::vector<float> Detokenizer::decode(const std::vector<int64_t> &codes) {
    if (codes.empty()) throw InputError("audio codes are empty: need at least one code");
    const std::vector<int64_t> &levels = hp_.fsq_input_levels;
    const int64_t n = (int64_t)codes.size(), nl = (int64_t)levels.size();
    const int64_t pool = hp_.pool_window_size, hidden = hp_.fsq_dim;
    // Digit i of a code counts in units of prod(levels[:i]); it maps to [-1, 1] in levels[i] steps.
    std::vector<float> fsq(n * nl);
    for (int64_t j = 0; j < n; j++) {
        if (codes[j] < 0 || codes[j] >= hp_.codebook_size)
            throw InputError(fmt("audio code %lld at index %lld is outside [0, %lld]", (long long)codes[j],
                                 (long long)j, (long long)hp_.codebook_size - 1));
        int64_t basis = 1;
        for (int64_t i = 0; i < nl; i++) {
            int64_t digit = (codes[j] / basis) % levels[i];
            fsq[j * nl + i] = (float)digit * (2.0f / (float)(levels[i] - 1)) - 1.0f;
            basis *= levels[i];
        }
    }

    Graph g;
    ggml_context *ctx = g.ctx();
    ggml_tensor *in = g.input("fsq", GGML_TYPE_F32, {n, nl});
    ggml_tensor *x = stack_.embed_tokens(ctx, project_out_(ctx, in));   // [H, N]
    x = ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, x, hidden, 1, n), hidden, pool, n, 1);
    x = ggml_add(ctx, x, special_tokens_);                               // [H, pool, N]: N sequences of pool
    ggml_tensor *pos = g.input("pos", GGML_TYPE_I32, {pool});
    ggml_tensor *win = nullptr;
    if (stack_.window < pool - 1) win = g.input("window_mask", GGML_TYPE_F16, {pool, pool});
    x = proj_out_(ctx, stack_.layers_and_norm(ctx, x, pos, win, nullptr));  // [out, pool, N]
    g.output(x);
    runner_.alloc(g);
    set_input(in, fsq.data(), fsq.size());
    auto p = iota(pool);
    set_input(pos, p.data(), p.size());
    if (win) {
        auto m = make_mask(pool, pool, MaskKind::Window, stack_.window);
        set_input(win, m.data(), m.size());
    }
    runner_.compute(g);
    return get_output(x);
}

}  // namespace ace

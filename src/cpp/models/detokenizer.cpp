// detokenizer.cpp: FSQ decode on the host, then the detokenizer graph.
#include "models/detokenizer.h"

#include "core/error.h"
#include "core/format.h"

namespace ace {

std::vector<int64_t> fsq_levels(const GGUFFile &f) {
    auto levels = f.has_key("acestep.fsq_input_levels") ? f.get_int_array("acestep.fsq_input_levels")
                                                        : std::vector<int64_t>{8, 8, 8, 5, 5, 5};
    for (auto l : levels)
        if (l < 2 || l > 65536)
            throw FileError(fmt("%s: acestep.fsq_input_levels holds %lld; levels must be in [2, 65536]",
                                f.path().c_str(), (long long)l));
    if (f.config().get_int("fsq_input_num_quantizers", 1) != 1)
        throw FileError(fmt("%s: fsq_input_num_quantizers is not 1; ACE-Step 1.5 codes hold one FSQ index per frame",
                            f.path().c_str()));
    return levels;
}

Detokenizer::Detokenizer(const std::string &dit_path, std::shared_ptr<Backend> backend)
    : file_(std::make_shared<GGUFFile>(dit_path)), w_(file_, backend), runner_(backend) {
    file_->expect_architecture("acestep-dit");
    DitAttnConfig cfg(*file_);
    levels_ = fsq_levels(*file_);
    for (auto l : levels_) codebook_ *= l;
    auto po = file_->require("tokenizer.quantizer.project_out.weight").torch_shape();
    auto st = file_->require("detokenizer.special_tokens").torch_shape();
    auto out = file_->require("detokenizer.proj_out.weight").torch_shape();
    if (po.size() != 2 || po[1] != (int64_t)levels_.size() || st.size() < 2 || out.size() != 2)
        throw FileError(fmt("%s: tokenizer.quantizer.project_out.weight %s does not take the %zu FSQ levels",
                            dit_path.c_str(), shape_str(po).c_str(), levels_.size()));
    hidden_ = po[0];
    pool_ = st[st.size() - 2];
    out_dim_ = out[0];
    project_out_.load(w_, "tokenizer.quantizer.project_out", (int64_t)levels_.size(), hidden_, true);
    stack_.load(w_, "detokenizer.", hidden_, cfg.eps, cfg.theta, cfg.window);
    special_tokens_ = w_.get("detokenizer.special_tokens", {pool_, hidden_}, Store::F32);
    proj_out_.load(w_, "detokenizer.proj_out", hidden_, out_dim_, true);
    w_.load();
}

std::vector<float> Detokenizer::decode(const std::vector<int64_t> &codes) {
    if (codes.empty()) throw InputError("audio codes are empty: need at least one code");
    const int64_t n = (int64_t)codes.size(), nl = (int64_t)levels_.size();
    // Digit i of a code counts in units of prod(levels[:i]); it maps to [-1, 1] in levels[i] steps.
    std::vector<float> fsq(n * nl);
    for (int64_t j = 0; j < n; j++) {
        if (codes[j] < 0 || codes[j] >= codebook_)
            throw InputError(fmt("audio code %lld at index %lld is outside [0, %lld]", (long long)codes[j],
                                 (long long)j, (long long)codebook_ - 1));
        int64_t basis = 1;
        for (int64_t i = 0; i < nl; i++) {
            int64_t digit = (codes[j] / basis) % levels_[i];
            fsq[j * nl + i] = (float)digit * (2.0f / (float)(levels_[i] - 1)) - 1.0f;
            basis *= levels_[i];
        }
    }

    Graph g;
    ggml_context *ctx = g.ctx();
    ggml_tensor *in = g.input("fsq", GGML_TYPE_F32, {n, nl});
    ggml_tensor *x = stack_.embed_tokens(ctx, project_out_(ctx, in));   // [H, N]
    x = ggml_repeat_4d(ctx, ggml_reshape_3d(ctx, x, hidden_, 1, n), hidden_, pool_, n, 1);
    x = ggml_add(ctx, x, special_tokens_);                               // [H, pool, N]: N sequences of pool
    ggml_tensor *pos = g.input("pos", GGML_TYPE_I32, {pool_});
    ggml_tensor *win = nullptr;
    if (stack_.window < pool_ - 1) win = g.input("window_mask", GGML_TYPE_F16, {pool_, pool_});
    x = proj_out_(ctx, stack_.layers_and_norm(ctx, x, pos, win, nullptr));  // [out, pool, N]
    g.output(x);
    runner_.alloc(g);
    set_input(in, fsq.data(), fsq.size());
    auto p = iota(pool_);
    set_input(pos, p.data(), p.size());
    if (win) {
        auto m = make_mask(pool_, pool_, MaskKind::Window, stack_.window);
        set_input(win, m.data(), m.size());
    }
    runner_.compute(g);
    return get_output(x);
}

}  // namespace ace

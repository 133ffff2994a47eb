// dit_adapters.cpp: adapters (LoRA, DoRA, LoKr) on the DiT's Linear weights — merged into the
// weights (read as F32, written back in the device's type) or applied at run time as extra
// branches of the Linears (nn/layers.h LinearAdapter).  The adapter files themselves are read
// in Python (acestep_ggml/adapters.py), which hands over dense F32 factors.
#include <cmath>

#include "core/error.h"
#include "core/format.h"
#include "core/graph.h"
#include "models/dit.h"

namespace ace {

std::vector<std::pair<std::string, Linear *>> DiT::linears() {
    std::vector<std::pair<std::string, Linear *>> out;
    const std::string p = "decoder.";
    for (size_t i = 0; i < layers_.size(); i++) {
        Layer &l = layers_[i];
        const std::string n = p + "layers." + std::to_string(i) + ".";
        for (auto [a, an] : {std::pair{&l.self_attn, "self_attn."}, std::pair{&l.cross_attn, "cross_attn."}})
            for (auto [lin, ln] : {std::pair{&a->q_proj, "q_proj"}, std::pair{&a->k_proj, "k_proj"},
                                   std::pair{&a->v_proj, "v_proj"}, std::pair{&a->o_proj, "o_proj"}})
                out.emplace_back(n + an + ln + ".weight", lin);
        for (auto [lin, ln] : {std::pair{&l.mlp.gate_proj, "gate_proj"}, std::pair{&l.mlp.up_proj, "up_proj"},
                               std::pair{&l.mlp.down_proj, "down_proj"}})
            out.emplace_back(n + "mlp." + ln + ".weight", lin);
    }
    for (auto [e, n] : {std::pair{&time_embed_, "time_embed."}, std::pair{&time_embed_r_, "time_embed_r."}})
        for (auto [lin, ln] : {std::pair{&e->linear_1, "linear_1"}, std::pair{&e->linear_2, "linear_2"},
                               std::pair{&e->time_proj, "time_proj"}})
            out.emplace_back(p + n + ln + ".weight", lin);
    out.emplace_back(p + "condition_embedder.weight", &condition_embedder_);
    return out;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> DiT::adaptable() const {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    for (auto &[name, lin] : const_cast<DiT *>(this)->linears())
        out.emplace_back(name, std::vector<int64_t>{lin->weight->ne[1], lin->weight->ne[0]});
    return out;
}

static Linear *find_linear(const std::vector<std::pair<std::string, Linear *>> &all, const std::string &name) {
    for (auto &[n, lin] : all)
        if (n == name) return lin;
    throw InputError(fmt("'%s' is not a Linear weight of the DiT that adapters can target", name.c_str()));
}

std::vector<float> DiT::weight(const std::string &name) const {
    find_linear(const_cast<DiT *>(this)->linears(), name);
    return weights_->read(name);
}

void DiT::set_weight(const std::string &name, const std::vector<float> &values) {
    Linear *lin = find_linear(linears(), name);
    forget_conditions();
    if (values.empty()) {
        weights_->restore(name);
        if (int8_) int8_->repack(*lin);
        return;
    }
    if ((int64_t)values.size() != ggml_nelements(lin->weight))
        throw InputError(fmt("%s: %zu values for a weight of %lld", name.c_str(), values.size(),
                             (long long)ggml_nelements(lin->weight)));
    for (float v : values)
        if (!std::isfinite(v)) throw InputError(fmt("%s: the merged weight contains NaN or infinity", name.c_str()));
    weights_->write(name, values);
    if (int8_) int8_->repack(*lin);
}

size_t DiT::adapter_bytes() const { return adapter_tensors_ ? adapter_tensors_->nbytes() : 0; }

void DiT::set_adapters(const std::vector<AdapterSpec> &specs) {
    auto all = linears();
    std::vector<Linear *> targets;
    size_t n_tensors = 0;
    for (const AdapterSpec &s : specs) {
        Linear *lin = find_linear(all, s.weight);
        for (const Linear *t : targets)
            if (t == lin) throw InputError(fmt("%s: adapted twice in one set (merge its branches)", s.weight.c_str()));
        targets.push_back(lin);
        const int64_t out = lin->weight->ne[1], in = lin->weight->ne[0];
        auto check = [&](const AdapterMatrix &m, const char *what) {
            if (m.rows < 1 || m.cols < 1 || (int64_t)m.data.size() != m.rows * m.cols)
                throw InputError(fmt("%s: %s is not a %lld x %lld matrix", s.weight.c_str(), what, (long long)m.rows,
                                     (long long)m.cols));
            for (float v : m.data)
                if (!std::isfinite(v)) throw InputError(fmt("%s: %s contains NaN or infinity", s.weight.c_str(), what));
        };
        if (!s.rows.empty() && (int64_t)s.rows.size() != out)
            throw InputError(fmt("%s: %zu row factors for %lld rows", s.weight.c_str(), s.rows.size(), (long long)out));
        n_tensors += !s.rows.empty();
        for (const AdapterBranchSpec &b : s.branches) {
            check(b.a, b.kron ? "w1" : "A");
            check(b.b, b.kron ? "w2" : "B");
            const bool fits = b.kron ? b.a.rows * b.b.rows == out && b.a.cols * b.b.cols == in
                                     : b.a.cols == in && b.b.rows == out && b.b.cols == b.a.rows;
            if (!fits)
                throw InputError(fmt("%s: a %s of %lldx%lld and %lldx%lld does not fit a weight of %lldx%lld",
                                     s.weight.c_str(), b.kron ? "LoKr" : "LoRA", (long long)b.a.rows,
                                     (long long)b.a.cols, (long long)b.b.rows, (long long)b.b.cols, (long long)out,
                                     (long long)in));
            if (!b.rows.empty() && (int64_t)b.rows.size() != out)
                throw InputError(fmt("%s: %zu branch row factors for %lld rows", s.weight.c_str(), b.rows.size(),
                                     (long long)out));
            if (!std::isfinite(b.scale)) throw InputError(fmt("%s: the scale is not finite", s.weight.c_str()));
            n_tensors += 2 + !b.rows.empty();
        }
    }
    // Drop the old set first: its memory may be needed for the new one.
    forget_conditions();
    for (auto &[n, lin] : all) lin->adapter = nullptr;
    adapters_.clear();
    adapter_tensors_.reset();
    if (specs.empty()) return;

    auto tensors = std::make_unique<DeviceTensors>(backend_, n_tensors + 1);
    struct Upload {
        ggml_tensor *t;
        const std::vector<float> *data;
    };
    std::vector<Upload> uploads;
    auto add = [&](const std::vector<int64_t> &shape, const std::vector<float> &data) {
        ggml_tensor *t = tensors->add("adapter", GGML_TYPE_F32, shape);
        uploads.push_back({t, &data});
        return t;
    };
    std::vector<LinearAdapter> adapters(specs.size());
    for (size_t i = 0; i < specs.size(); i++) {
        const AdapterSpec &s = specs[i];
        LinearAdapter &ad = adapters[i];
        if (!s.rows.empty()) ad.rows = add({(int64_t)s.rows.size()}, s.rows);
        for (const AdapterBranchSpec &b : s.branches) {
            AdapterBranch br;
            ggml_tensor *a = add({b.a.rows, b.a.cols}, b.a.data), *bb = add({b.b.rows, b.b.cols}, b.b.data);
            if (b.kron) br.w1 = a, br.w2 = bb;
            else br.a = a, br.b = bb;
            if (!b.rows.empty()) br.rows = add({(int64_t)b.rows.size()}, b.rows);
            br.scale = b.scale;
            ad.branches.push_back(br);
        }
    }
    tensors->alloc("the DiT's run-time adapters");
    for (const Upload &u : uploads) set_input(u.t, u.data->data(), u.data->size());
    adapter_tensors_ = std::move(tensors);
    adapters_ = std::move(adapters);
    for (size_t i = 0; i < specs.size(); i++) targets[i]->adapter = &adapters_[i];
}

}  // namespace ace

// py_dit.cpp: the DiT as `_core.DiT`; the Python wrapper (acestep_ggml/dit.py) adds defaults.
#include "models/dit.h"
#include "python/bindings.h"

namespace ace {

// A (T, C) or (B, T, C) float array as (B, T, C); `what` names it in errors.
static py::array_t<float, py::array::c_style> batched(const py::handle &obj, const char *what, int64_t channels,
                                                      const char *channel_name) {
    auto a = as_f32(obj, what, 2, 3);
    if (a.ndim() == 2) a = a.reshape({(ssize_t)1, a.shape(0), a.shape(1)});
    if (a.shape(2) != channels)
        throw InputError(fmt("%s must have %lld %s in its last axis, got %lld", what, (long long)channels,
                             channel_name, (long long)a.shape(2)));
    return a;
}

// A 2-D float32 array as a row-major matrix.
static AdapterMatrix matrix(const py::handle &obj, const char *what) {
    auto a = as_f32(obj, what, 2, 2);
    return {a.shape(0), a.shape(1), std::vector<float>(a.data(), a.data() + a.size())};
}

static std::vector<float> floats(const py::handle &obj, const char *what) {
    if (obj.is_none()) return {};
    auto a = as_f32(obj, what, 1, 1);
    return std::vector<float>(a.data(), a.data() + a.size());
}

void bind_dit(py::module_ &m) {
    py::class_<DiT, std::shared_ptr<DiT>>(m, "DiT")
        .def(py::init([](const py::object &path, const std::string &device, int n_threads) {
                 return make_model<DiT>(device, n_threads, path);
             }),
             py::arg("path"), py::arg("device") = "cpu", py::arg("n_threads") = 1,
             "The DiT of an acestep-dit file: a path, or a GGUFFile shared with the other models.")
        .def_property_readonly("hparams", &DiT::hparams)
        .def_property_readonly("config", [](const DiT &d) {
            const DiTHParams &h = d.hparams();
            py::dict o;
            o["hidden_size"] = h.hidden_size;
            o["intermediate_size"] = h.intermediate_size;
            o["num_hidden_layers"] = h.num_hidden_layers;
            o["num_attention_heads"] = h.num_attention_heads;
            o["num_key_value_heads"] = h.num_key_value_heads;
            o["head_dim"] = h.head_dim;
            o["in_channels"] = h.in_channels;
            o["audio_acoustic_hidden_dim"] = h.audio_acoustic_hidden_dim;
            o["patch_size"] = h.patch_size;
            o["sliding_window"] = h.sliding_window;
            o["encoder_hidden_size"] = h.encoder_hidden_size;
            o["rope_theta"] = h.rope_theta;
            o["rms_norm_eps"] = h.rms_norm_eps;
            return o;
        }, "The DiT's sizes as a dict of config.json's names (hparams has every one).")
        .def_property_readonly("weight_bytes", &DiT::weight_bytes)
        .def_property_readonly("adapter_bytes", &DiT::adapter_bytes)
        .def("adaptable", &DiT::adaptable, "(name, [out, in]) of every Linear weight adapters may target.")
        .def("get_weight", [](const DiT &d, const std::string &name) {
            std::vector<float> v;
            std::vector<int64_t> shape;
            for (auto &[n, s] : d.adaptable())
                if (n == name) shape = s;
            {
                py::gil_scoped_release nogil;
                v = d.weight(name);
            }
            return to_numpy(v, {(ssize_t)shape.at(0), (ssize_t)shape.at(1)});
        }, py::arg("name"), "A Linear weight (out, in) as float32, dequantized from its device type.")
        .def("set_weight", [](DiT &d, const std::string &name, const py::handle &values) {
            std::vector<float> v;
            if (!values.is_none()) {
                auto a = as_f32(values, name.c_str(), 2, 2);
                v.assign(a.data(), a.data() + a.size());
            }
            py::gil_scoped_release nogil;
            d.set_weight(name, v);
        }, py::arg("name"), py::arg("values"),
           "Writes float32 values (out, in) into a Linear weight in its device type (quantized again where "
           "it is quantized); None restores the file's values.  Conditions must be set again after.")
        .def("set_adapters", [](DiT &d, const py::list &specs) {
            // specs: [(weight, rows | None, [(kind, a, b, rows | None, scale), ...]), ...]
            std::vector<AdapterSpec> out;
            for (const py::handle &h : specs) {
                auto t = h.cast<py::tuple>();
                AdapterSpec s;
                s.weight = t[0].cast<std::string>();
                s.rows = floats(t[1], "rows");
                for (const py::handle &bh : t[2].cast<py::list>()) {
                    auto b = bh.cast<py::tuple>();
                    AdapterBranchSpec br;
                    const std::string kind = b[0].cast<std::string>();
                    if (kind != "lora" && kind != "kron") throw InputError("adapter branch kind must be lora or kron");
                    br.kron = kind == "kron";
                    br.a = matrix(b[1], br.kron ? "w1" : "A");
                    br.b = matrix(b[2], br.kron ? "w2" : "B");
                    br.rows = floats(b[3], "rows");
                    br.scale = b[4].cast<float>();
                    s.branches.push_back(std::move(br));
                }
                out.push_back(std::move(s));
            }
            py::gil_scoped_release nogil;
            d.set_adapters(out);
        }, py::arg("specs"),
           "Run-time adapters: [(weight, rows, [(\"lora\"|\"kron\", A|w1, B|w2, rows, scale), ...]), ...]; "
           "[] removes them.  Conditions must be set again after.")
        .def("forward", [](DiT &d, py::handle x_t, py::handle t, py::handle enc, py::handle src, py::handle mask) {
            const int64_t A = d.hparams().audio_acoustic_hidden_dim, E = d.hparams().encoder_hidden_size;
            auto x = batched(x_t, "x_t", A, "latent channels");
            auto s = batched(src, "src_latents", A, "latent channels");
            auto k = batched(mask, "chunk_mask", A, "latent channels");
            auto e = batched(enc, "encoder_states", E, "channels");
            auto tt = as_f32(t, "t", 1, 1);
            const int64_t B = x.shape(0), T = x.shape(1), S = e.shape(1);
            for (auto [a, name] : {std::pair{&s, "src_latents"}, std::pair{&k, "chunk_mask"}})
                if (a->shape(0) != B || a->shape(1) != T)
                    throw InputError(fmt("%s has shape (%lld, %lld, %lld), x_t (%lld, %lld, %lld)", name,
                                         (long long)a->shape(0), (long long)a->shape(1), (long long)a->shape(2),
                                         (long long)B, (long long)T, (long long)A));
            if (e.shape(0) != B)
                throw InputError(fmt("encoder_states has batch %lld, x_t has %lld", (long long)e.shape(0), (long long)B));
            if (tt.shape(0) != B)
                throw InputError(fmt("t has %lld values for a batch of %lld", (long long)tt.shape(0), (long long)B));
            std::vector<float> v;
            {
                py::gil_scoped_release nogil;
                v = d.forward(x.data(), s.data(), k.data(), tt.data(), e.data(), B, T, S);
            }
            return to_numpy(v, {(ssize_t)B, (ssize_t)T, (ssize_t)A});
        }, py::arg("x_t"), py::arg("t"), py::arg("encoder_states"), py::arg("src_latents"), py::arg("chunk_mask"),
           "Velocity (B, T, audio_dim) from batched float32 inputs; t has one value per batch row.")
        .def("set_conditions", [](DiT &d, py::handle enc, py::handle src, py::handle mask) {
            const int64_t A = d.hparams().audio_acoustic_hidden_dim, E = d.hparams().encoder_hidden_size;
            auto e = batched(enc, "encoder_states", E, "channels");
            auto s = batched(src, "src_latents", A, "latent channels");
            auto k = batched(mask, "chunk_mask", A, "latent channels");
            if (k.shape(0) != s.shape(0) || k.shape(1) != s.shape(1))
                throw InputError(fmt("chunk_mask has shape (%lld, %lld, %lld), src_latents (%lld, %lld, %lld)",
                                     (long long)k.shape(0), (long long)k.shape(1), (long long)A,
                                     (long long)s.shape(0), (long long)s.shape(1), (long long)A));
            py::gil_scoped_release nogil;
            d.set_conditions(e.data(), e.shape(0), e.shape(1), s.data(), k.data(), s.shape(0), s.shape(1));
        }, py::arg("encoder_states"), py::arg("src_latents"), py::arg("chunk_mask"),
           "Uploads one generation's conditions (batch Be for encoder_states, 1 or Be for the latents) and "
           "computes what depends on them alone.")
        .def("step", [](DiT &d, py::handle x_t, py::handle t) {
            const int64_t A = d.hparams().audio_acoustic_hidden_dim;
            auto x = batched(x_t, "x_t", A, "latent channels");
            auto tt = as_f32(t, "t", 1, 1);
            const int64_t B = tt.shape(0), T = x.shape(1);
            std::vector<float> v;
            {
                py::gil_scoped_release nogil;
                v = d.step(x.data(), x.shape(0), T, tt.data(), B);
            }
            return to_numpy(v, {(ssize_t)B, (ssize_t)T, (ssize_t)A});
        }, py::arg("x_t"), py::arg("t"),
           "Velocity (B, T, audio_dim) over the current conditions, B = len(t); x_t has batch 1 or B.");
}

}  // namespace ace

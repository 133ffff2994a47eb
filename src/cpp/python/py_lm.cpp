// py_lm.cpp: Python binding of the 5 Hz LM.
#include "models/lm.h"
#include "python/bindings.h"

namespace ace {

// [n_seq, rows] logits from a decoding call run without the GIL.
template <class Call>
static py::array seq_logits(const LM &lm, Call &&call) {
    std::vector<float> out;
    {
        py::gil_scoped_release nogil;
        out = call();
    }
    const ssize_t n = lm.n_seq();
    return to_numpy(out, {n, (ssize_t)out.size() / std::max<ssize_t>(n, 1)});
}

void bind_lm(py::module_ &m) {
    py::class_<LM, std::shared_ptr<LM>>(m, "_LM")
        .def(py::init([](const py::object &path, const std::string &device, int n_threads) {
            return make_model<LM>(device, n_threads, path);
        }), py::arg("path"), py::arg("device"), py::arg("n_threads"))
        .def_property_readonly("hparams", &LM::hparams)
        .def_property_readonly("vocab_size", &LM::vocab_size)
        .def_property_readonly("n_seq", &LM::n_seq)
        .def_property_readonly("n_ctx", &LM::n_ctx)
        .def_property_readonly("tied", &LM::tied)
        .def("length", &LM::length)
        .def("reset", [](LM &lm, int n_seq, int64_t n_ctx, const std::string &kv) {
            if (kv != "f16" && kv != "f32") throw InputError(fmt("kv_type must be 'f16' or 'f32', got '%s'", kv.c_str()));
            lm.reset(n_seq, n_ctx, kv == "f16" ? GGML_TYPE_F16 : GGML_TYPE_F32);
        }, py::arg("n_seq"), py::arg("n_ctx"), py::arg("kv_type") = "f16")
        .def("prefill", [](LM &lm, int seq, py::handle ids) {
            auto v = token_ids(ids, "token ids", lm.vocab_size());
            std::vector<float> out;
            {
                py::gil_scoped_release nogil;
                out = lm.prefill(seq, v);
            }
            return to_numpy(out, {(ssize_t)lm.vocab_size()});
        }, py::arg("seq"), py::arg("ids"))
        .def("decode", [](LM &lm, py::handle tokens, int64_t lo, int64_t hi) {
            auto v = token_ids(tokens, "tokens", lm.vocab_size());
            return seq_logits(lm, [&] { return lm.decode(v, lo, hi); });
        }, py::arg("tokens"), py::arg("lo") = 0, py::arg("hi") = -1)
        .def("extend", [](LM &lm, py::handle ids, int64_t lo, int64_t hi) {
            auto v = token_ids(ids, "token ids", lm.vocab_size());
            return seq_logits(lm, [&] { return lm.extend(v, lo, hi); });
        }, py::arg("ids"), py::arg("lo") = 0, py::arg("hi") = -1);
}

}  // namespace ace

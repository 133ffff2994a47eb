// py_text_encoder.cpp: the Qwen3 text encoder as `_core._TextEncoder`.
#include "models/text_encoder.h"
#include "python/bindings.h"

namespace ace {

// A TextEncoder method from ids [T] to rows [T, hidden], as a Python method.
static auto ids_to_rows(std::vector<float> (TextEncoder::*method)(const std::vector<int32_t> &)) {
    return [method](TextEncoder &e, py::handle ids) {
        auto v = token_ids(ids, "token ids", e.vocab_size());
        std::vector<float> out;
        {
            py::gil_scoped_release nogil;
            out = (e.*method)(v);
        }
        return to_numpy(out, {(ssize_t)v.size(), (ssize_t)e.hidden()});
    };
}

void bind_text_encoder(py::module_ &m) {
    py::class_<TextEncoder, std::shared_ptr<TextEncoder>>(m, "_TextEncoder")
        .def(py::init([](const py::object &path, const std::string &device, int n_threads) {
            return make_model<TextEncoder>(device, n_threads, path);
        }), py::arg("path"), py::arg("device"), py::arg("n_threads"))
        .def_property_readonly("hparams", &TextEncoder::hparams)
        .def_property_readonly("hidden", &TextEncoder::hidden)
        .def_property_readonly("vocab_size", &TextEncoder::vocab_size)
        .def("encode", ids_to_rows(&TextEncoder::encode))
        .def("embed", ids_to_rows(&TextEncoder::embed));
}

}  // namespace ace

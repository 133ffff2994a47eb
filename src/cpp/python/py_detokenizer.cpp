// py_detokenizer.cpp: the audio-code detokenizer as `_core._Detokenizer`.
#include "models/detokenizer.h"
#include "python/bindings.h"

namespace ace {

void bind_detokenizer(py::module_ &m) {
    py::class_<Detokenizer, std::shared_ptr<Detokenizer>>(m, "_Detokenizer")
        .def(py::init([](const py::object &dit, const std::string &device, int n_threads) {
            return make_model<Detokenizer>(device, n_threads, dit);
        }), py::arg("dit_path"), py::arg("device"), py::arg("n_threads"))
        .def_property_readonly("hparams", &Detokenizer::hparams)
        .def_property_readonly("codebook_size", &Detokenizer::codebook_size)
        .def_property_readonly("pool", &Detokenizer::pool)
        .def_property_readonly("out_dim", &Detokenizer::out_dim)
        .def("decode", [](Detokenizer &d, py::array_t<int64_t, py::array::c_style> codes) {
            std::vector<int64_t> c(codes.data(), codes.data() + codes.size());
            std::vector<float> out;
            {
                py::gil_scoped_release nogil;
                out = d.decode(c);
            }
            return to_numpy(out, {(ssize_t)(c.size() * d.pool()), (ssize_t)d.out_dim()});
        });
}

}  // namespace ace

// py_audio_tokenizer.cpp: the audio tokenizer as `_core._AudioTokenizer`.
#include "models/audio_tokenizer.h"
#include "python/bindings.h"

namespace ace {

void bind_audio_tokenizer(py::module_ &m) {
    py::class_<AudioTokenizer, std::shared_ptr<AudioTokenizer>>(m, "_AudioTokenizer")
        .def(py::init([](const py::object &dit, const std::string &device, int n_threads) {
            return make_model<AudioTokenizer>(device, n_threads, dit);
        }), py::arg("dit_path"), py::arg("device"), py::arg("n_threads"))
        .def_property_readonly("hparams", &AudioTokenizer::hparams)
        .def_property_readonly("codebook_size", &AudioTokenizer::codebook_size)
        .def_property_readonly("pool", &AudioTokenizer::pool)
        .def_property_readonly("in_dim", &AudioTokenizer::in_dim)
        .def("tokenize", [](AudioTokenizer &t, py::handle latents) {
            auto a = as_f32(latents, "latents", 2, 2);
            if (a.shape(1) != t.in_dim())
                throw InputError(fmt("latents must have shape (T, %lld), got (%zd, %zd)", (long long)t.in_dim(),
                                     a.shape(0), a.shape(1)));
            std::vector<float> v(a.data(), a.data() + a.size());
            std::vector<int64_t> codes;
            {
                py::gil_scoped_release nogil;
                codes = t.tokenize(v);
            }
            py::array_t<int64_t> out((ssize_t)codes.size());
            std::copy(codes.begin(), codes.end(), out.mutable_data());
            return out;
        }, py::arg("latents"), "25 Hz latents (T, in_dim) -> 5 Hz codes (ceil(T / pool),) as int64.");
}

}  // namespace ace

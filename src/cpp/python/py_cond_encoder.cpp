// py_cond_encoder.cpp: the condition encoder as `_core._ConditionEncoder`.
#include "models/cond_encoder.h"
#include "python/bindings.h"

namespace ace {

static std::vector<uint8_t> as_mask(const py::object &m) {
    if (m.is_none()) return {};
    auto a = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(m);
    if (!a || a.ndim() != 1) throw InputError("masks must be 1-D arrays of 0/1");
    return std::vector<uint8_t>(a.data(), a.data() + a.size());
}

static std::vector<float> rows(const py::handle &obj, const char *what, int64_t width) {
    auto a = as_f32(obj, what, 2, 2);
    if (a.shape(1) != width)
        throw InputError(fmt("%s must have shape [T, %lld], got [%zd, %zd]", what, (long long)width, a.shape(0),
                             a.shape(1)));
    if (a.shape(0) == 0) throw InputError(fmt("%s has no rows", what));
    return std::vector<float>(a.data(), a.data() + a.size());
}

void bind_cond_encoder(py::module_ &m) {
    py::class_<ConditionEncoder, std::shared_ptr<ConditionEncoder>>(m, "_ConditionEncoder")
        .def(py::init([](const py::object &dit, const py::object &text, const std::string &device, int n_threads) {
            return make_model<ConditionEncoder>(device, n_threads, dit, text);
        }), py::arg("dit_path"), py::arg("text_encoder_path"), py::arg("device"), py::arg("n_threads"))
        .def_property_readonly("hparams", &ConditionEncoder::hparams)
        .def_property_readonly("text_hparams", &ConditionEncoder::text_hparams)
        .def_property_readonly("hidden", &ConditionEncoder::hidden)
        .def_property_readonly("text_dim", &ConditionEncoder::text_dim)
        .def_property_readonly("timbre_dim", &ConditionEncoder::timbre_dim)
        .def_property_readonly("null_condition_emb", [](const ConditionEncoder &e) {
            return to_numpy(e.null_condition_emb(), {(ssize_t)e.hidden()});
        })
        .def_property_readonly("silence_latent", [](const ConditionEncoder &e) {
            return to_numpy(e.silence_latent(), {(ssize_t)e.silence_frames(), (ssize_t)e.timbre_dim()});
        })
        .def("encode", [](ConditionEncoder &e, py::handle text, py::handle lyric_ids, py::handle refer,
                          py::object text_mask, py::object lyric_mask) {
            auto t = rows(text, "text_hidden_states", e.text_dim());
            auto ids = token_ids(lyric_ids, "lyric token ids", e.vocab_size());
            std::vector<float> r;
            if (!refer.is_none()) r = rows(refer, "reference latent", e.timbre_dim());
            auto tm = as_mask(text_mask), lm = as_mask(lyric_mask);
            ConditionEncoder::Output o;
            {
                py::gil_scoped_release nogil;
                o = e.encode(t, tm, ids, lm, r);
            }
            py::array_t<bool> mask((ssize_t)o.mask.size());
            for (size_t i = 0; i < o.mask.size(); i++) mask.mutable_data()[i] = o.mask[i] != 0;
            return py::make_tuple(to_numpy(o.states, {(ssize_t)o.mask.size(), (ssize_t)e.hidden()}), mask);
        }, py::arg("text_hidden_states"), py::arg("lyric_ids"), py::arg("refer") = py::none(),
           py::arg("text_mask") = py::none(), py::arg("lyric_mask") = py::none());
}

}  // namespace ace

// py_vae.cpp: the VAE in Python (acestep_ggml._core.VAE); shapes are checked here,
// values (finite, non-empty) in vae.cpp.
#include "models/vae.h"
#include "python/bindings.h"

namespace ace {

// The tile callback: with the GIL held, a pending Ctrl-C stops the pass between tiles
// (KeyboardInterrupt reaches the caller), then the Python progress(done, total) if any.
static VAE::TileProgress tile_progress(py::object progress) {
    return [progress](int64_t done, int64_t total) {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        if (!progress.is_none()) progress(done, total);
    };
}

void bind_vae(py::module_ &m) {
    py::class_<VAE, std::shared_ptr<VAE>>(m, "VAE")
        .def(py::init([](const py::object &path, const std::string &device, int n_threads) {
                 return make_model<VAE>(device, n_threads, path);
             }),
             py::arg("path"), py::arg("device") = "cpu", py::arg("n_threads") = 1)
        .def_property_readonly("hparams", &VAE::hparams)
        .def_property_readonly("sample_rate", [](const VAE &v) { return v.hparams().sampling_rate; })
        .def_property_readonly("hop_length", [](const VAE &v) { return v.hparams().hop_length; })
        .def_property_readonly("latent_channels", [](const VAE &v) { return v.hparams().decoder_input_channels; })
        .def_property_readonly("audio_channels", [](const VAE &v) { return v.hparams().audio_channels; })
        .def_property_readonly("compute_type", &VAE::compute_type)
        .def("default_chunk", [](VAE &v, int64_t cpu_chunk, int64_t sub_chunk) {
            py::gil_scoped_release nogil;
            return v.default_chunk(cpu_chunk, sub_chunk);
        }, py::arg("cpu_chunk"), py::arg("sub_chunk"),
           "Frames per tile when none is named: cpu_chunk on the CPU, more on a GPU.")
        .def("decode", [](VAE &v, py::handle latents, int64_t chunk, int64_t overlap, py::object progress,
                          int64_t sub_chunk) {
            auto z = as_f32(latents, "latents", 3, 3);
            const int64_t B = z.shape(0), T = z.shape(1), C = z.shape(2);
            if (C != v.hparams().decoder_input_channels)
                throw InputError(fmt("latents must have %lld channels in the last axis, got %lld",
                                     (long long)v.hparams().decoder_input_channels, (long long)C));
            const VAE::TileProgress tick = tile_progress(progress);  // made and freed with the GIL held
            std::vector<float> out;
            {
                py::gil_scoped_release nogil;
                out = v.decode(z.data(), B, T, {chunk, overlap, sub_chunk}, tick);
            }
            const int64_t A = v.hparams().audio_channels;
            return to_numpy(out, {(ssize_t)B, (ssize_t)A, (ssize_t)(B ? out.size() / (B * A) : 0)});
        }, py::arg("latents"), py::arg("chunk") = 0, py::arg("overlap") = 0, py::arg("progress") = py::none(),
           py::arg("sub_chunk") = 0, "(B, T, latent_channels) float32 -> (B, audio_channels, T * hop_length).")
        .def("encode", [](VAE &v, py::handle audio, int64_t chunk, int64_t overlap, py::object progress,
                          int64_t sub_chunk) {
            auto a = as_f32(audio, "audio", 3, 3);
            const int64_t B = a.shape(0), A = a.shape(1), N = a.shape(2);
            if (A != v.hparams().audio_channels)
                throw InputError(fmt("audio must have %lld channels, got %lld", (long long)v.hparams().audio_channels,
                                     (long long)A));
            const VAE::TileProgress tick = tile_progress(progress);  // made and freed with the GIL held
            std::vector<float> mean, stdev;
            {
                py::gil_scoped_release nogil;
                v.encode(a.data(), B, N, {chunk, overlap, sub_chunk}, mean, stdev, tick);
            }
            const ssize_t L = v.hparams().decoder_input_channels, T = (ssize_t)(mean.size() / (B * L));
            return py::make_tuple(to_numpy(mean, {(ssize_t)B, T, L}), to_numpy(stdev, {(ssize_t)B, T, L}));
        }, py::arg("audio"), py::arg("chunk") = 0, py::arg("overlap") = 0, py::arg("progress") = py::none(),
           py::arg("sub_chunk") = 0, "(B, audio_channels, N) float32 -> (mean, std), each (B, N // hop_length, latent_channels).");
}

}  // namespace ace

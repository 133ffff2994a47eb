// bindings.h: the `acestep_ggml._core` module.  Each part binds itself through one bind_*
// function, called from module.cpp, so that models can be added without touching each other.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/format.h"
#include "core/gguf_file.h"

namespace py = pybind11;

namespace ace {

// A C-contiguous float32 array from Python, checked for rank.  Throws InputError
// naming `what` when the dtype or the rank is wrong; never converts silently from
// integers, so a caller passing codes where latents belong hears about it.
py::array_t<float, py::array::c_style> as_f32(const py::handle &obj, const char *what, int min_ndim, int max_ndim);

// Token ids for an embedding table of `vocab` rows, from a 1-D integer array or sequence (an
// empty one too: the model says what it needs).  Throws InputError naming `what` for another
// rank, a non-integer dtype, or an id outside [0, vocab), so that no id is ever wrapped.
std::vector<int32_t> token_ids(const py::handle &obj, const char *what, int64_t vocab);

// A float32 numpy array of the given shape holding data.
py::array_t<float> to_numpy(const std::vector<float> &data, const std::vector<ssize_t> &shape);

// A model's file as Python passes it: a path (str or os.PathLike), opened when the model is
// built, or an open `_core.GGUFFile`, shared with the other models built from it so that a
// pipeline opens each file once.
class FileArg {
  public:
    explicit FileArg(const py::handle &obj);  // with the GIL
    std::shared_ptr<GGUFFile> open() const;    // without it
  private:
    std::shared_ptr<GGUFFile> file_;
    std::string path_;
};

// The one constructor of every model binding: Model(files..., backend) with the backend of
// (device, n_threads) and each file a path or a GGUFFile.  Files are opened and weights loaded
// without the GIL (seconds), so other Python threads run meanwhile.
template <class Model, class... Files>
std::shared_ptr<Model> make_model(const std::string &device, int n_threads, const Files &...files) {
    const std::array<FileArg, sizeof...(Files)> args{FileArg(files)...};
    py::gil_scoped_release nogil;
    // Also without the GIL: Backend::get waits for a graph that another thread computes on the
    // same backend before it sets the thread count.
    std::shared_ptr<Backend> backend = Backend::get(device, n_threads);
    return std::apply([&](const auto &...a) { return std::make_shared<Model>(a.open()..., backend); }, args);
}

// GGUFFile.hparams: the typed hyperparameters of the file's architecture.
py::object hparams_of(const GGUFFile &f);

void bind_core(py::module_ &m);
void bind_hparams(py::module_ &m);
void bind_gguf(py::module_ &m);
void bind_types(py::module_ &m);
void bind_dit(py::module_ &m);
void bind_text_encoder(py::module_ &m);
void bind_cond_encoder(py::module_ &m);
void bind_detokenizer(py::module_ &m);
void bind_audio_tokenizer(py::module_ &m);
void bind_vae(py::module_ &m);
void bind_lm(py::module_ &m);

}  // namespace ace

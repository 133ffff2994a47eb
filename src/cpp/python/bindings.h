// bindings.h: the `acestep_ggml._core` module.  Each part binds itself through one bind_*
// function, called from module.cpp, so that models can be added without touching each other.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "core/format.h"

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

void bind_core(py::module_ &m);
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

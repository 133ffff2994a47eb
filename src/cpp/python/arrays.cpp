// arrays.cpp: numpy arrays in and out of the core.
#include <cstring>

#include "python/bindings.h"

namespace ace {

py::array_t<float, py::array::c_style> as_f32(const py::handle &obj, const char *what, int min_ndim, int max_ndim) {
    py::array arr = py::array::ensure(obj);
    if (!arr) throw InputError(fmt("%s must be a numpy array", what));
    if (!arr.dtype().is(py::dtype::of<float>()) && !arr.dtype().is(py::dtype::of<double>()) &&
        !arr.dtype().is(py::dtype("float16")))
        throw InputError(fmt("%s must be a floating-point array, got dtype %s", what,
                             std::string(py::str(arr.dtype())).c_str()));
    if (arr.ndim() < min_ndim || arr.ndim() > max_ndim)
        throw InputError(fmt("%s must have %d to %d dimensions, got %d", what, min_ndim, max_ndim, (int)arr.ndim()));
    return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
}

std::vector<int32_t> token_ids(const py::handle &obj, const char *what, int64_t vocab) {
    py::array a = py::array::ensure(obj);
    if (!a || a.ndim() != 1) throw InputError(fmt("%s must be a 1-D sequence of token ids", what));
    if (a.size() > 0 && a.dtype().kind() != 'i' && a.dtype().kind() != 'u')
        throw InputError(fmt("%s must be integers, got dtype %s", what, std::string(py::str(a.dtype())).c_str()));
    auto v = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    std::vector<int32_t> out(v.size());
    for (ssize_t i = 0; i < v.size(); i++) {
        const int64_t id = v.data()[i];
        if (id < 0 || id >= vocab)
            throw InputError(fmt("%s[%zd] = %lld is outside the vocabulary [0, %lld)", what, i, (long long)id,
                                 (long long)vocab));
        out[i] = (int32_t)id;
    }
    return out;
}

py::array_t<float> to_numpy(const std::vector<float> &data, const std::vector<ssize_t> &shape) {
    py::array_t<float> out(shape);
    std::memcpy(out.mutable_data(), data.data(), data.size() * sizeof(float));
    return out;
}

}  // namespace ace

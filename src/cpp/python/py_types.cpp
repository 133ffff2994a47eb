// py_types.cpp: ggml's tensor types in Python: encoding and decoding with ggml's own quantizers.
#include <strings.h>

#include <cstring>

#include "core/types.h"
#include "nn/int8_matmul.h"
#include "python/bindings.h"

namespace ace {

static ggml_type type_from_name(const std::string &name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char *n = ggml_type_name((ggml_type)t);
        if (n && ggml_get_type_traits((ggml_type)t)->blck_size > 0 && strcasecmp(n, name.c_str()) == 0)
            return (ggml_type)t;
    }
    throw InputError(fmt("unknown ggml type '%s'", name.c_str()));
}

void bind_types(py::module_ &m) {
    m.def("int8_supported", &int8_matmul_supported,
          "Whether this CPU runs the int8 matmuls (AVX-512 VNNI; ACESTEP_GGML_INT8).");
    m.def("int8_matmul", [](py::handle w, py::handle x, int n_threads) {
        auto wa = as_f32(w, "w", 2, 2), xa = as_f32(x, "x", 2, 2);
        const int64_t n_out = wa.shape(0), in = wa.shape(1), rows = xa.shape(0);
        if (xa.shape(1) != in)
            throw InputError(fmt("int8_matmul: x has rows of %lld, w of %lld", (long long)xa.shape(1), (long long)in));
        std::vector<float> wv(wa.data(), wa.data() + wa.size()), xv(xa.data(), xa.data() + xa.size()), y;
        {
            py::gil_scoped_release nogil;
            y = int8_matmul_host(wv, n_out, in, xv, rows, n_threads);
        }
        py::array_t<float> out({(ssize_t)rows, (ssize_t)n_out});
        std::memcpy(out.mutable_data(), y.data(), y.size() * sizeof(float));
        return out;
    }, py::arg("w"), py::arg("x"), py::arg("n_threads") = 2,
       "x @ w.T through the int8 kernels (w [out, in], x [rows, in], float32): for tests.");
    m.def("quantize", [](py::handle data, const std::string &type_name) {
        ggml_type type = type_from_name(type_name);
        auto arr = as_f32(data, "data", 1, 8);
        int64_t n_per_row = arr.ndim() ? arr.shape(arr.ndim() - 1) : 1;
        int64_t nrows = n_per_row ? arr.size() / n_per_row : 0;
        if (n_per_row % ggml_blck_size(type) != 0)
            throw InputError(fmt("%s needs rows of a multiple of %lld values, got %lld", ggml_type_name(type),
                                 (long long)ggml_blck_size(type), (long long)n_per_row));
        if (ggml_quantize_requires_imatrix(type))
            throw InputError(fmt("%s needs an importance matrix, which this converter does not compute",
                                 ggml_type_name(type)));
        py::array_t<uint8_t> out((ssize_t)(ggml_row_size(type, n_per_row) * nrows));
        const float *src = arr.data();
        uint8_t *dst = out.mutable_data();
        {
            py::gil_scoped_release nogil;
            if (type == GGML_TYPE_F32) std::memcpy(dst, src, nrows * n_per_row * sizeof(float));
            else ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, nullptr);
        }
        return out;
    }, py::arg("data"), py::arg("type"),
       "Encode float32 rows (last axis) into a ggml type with ggml's own quantizers; returns the bytes.");

    m.def("dequantize", [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> raw,
                           const std::string &type_name, std::vector<int64_t> shape) {
        ggml_type type = type_from_name(type_name);
        int64_t n = 1;
        for (auto d : shape) n *= d;
        int64_t n_per_row = shape.empty() ? 1 : shape.back();
        if (n_per_row % ggml_blck_size(type) != 0 || (size_t)raw.size() != ggml_row_size(type, n_per_row) * (n / std::max<int64_t>(n_per_row, 1)))
            throw InputError(fmt("%zd bytes do not hold a %s tensor of shape %s", (ssize_t)raw.size(),
                                 ggml_type_name(type), shape_str(shape).c_str()));
        std::vector<float> v(n);
        to_float(type, raw.data(), v.data(), n);
        return to_numpy(v, std::vector<ssize_t>(shape.begin(), shape.end()));
    }, py::arg("raw"), py::arg("type"), py::arg("shape"));

    m.def("type_size", [](const std::string &type_name) {
        ggml_type type = type_from_name(type_name);
        return py::make_tuple(ggml_blck_size(type), ggml_type_size(type));
    }, py::arg("type"), "(values per block, bytes per block) of a ggml type.");
}

}  // namespace ace

// py_gguf.cpp: GGUF files in Python (`_core.GGUFFile`), weight loading as the models do it, and
// the config.json reader.
#include "core/backend.h"
#include "core/gguf_file.h"
#include "core/json.h"
#include "core/weights.h"
#include "python/bindings.h"

namespace ace {

// Python value of one metadata entry; arrays longer than max_array are summarised.
static py::object kv_value(gguf_context *g, int64_t id, size_t max_array) {
    gguf_type t = gguf_get_kv_type(g, id);
    auto scalar = [&](gguf_type st, const void *p) -> py::object {
        switch (st) {
            case GGUF_TYPE_UINT8: return py::int_(*(const uint8_t *)p);
            case GGUF_TYPE_INT8: return py::int_(*(const int8_t *)p);
            case GGUF_TYPE_UINT16: return py::int_(*(const uint16_t *)p);
            case GGUF_TYPE_INT16: return py::int_(*(const int16_t *)p);
            case GGUF_TYPE_UINT32: return py::int_(*(const uint32_t *)p);
            case GGUF_TYPE_INT32: return py::int_(*(const int32_t *)p);
            case GGUF_TYPE_UINT64: return py::int_(*(const uint64_t *)p);
            case GGUF_TYPE_INT64: return py::int_(*(const int64_t *)p);
            case GGUF_TYPE_FLOAT32: return py::float_(*(const float *)p);
            case GGUF_TYPE_FLOAT64: return py::float_(*(const double *)p);
            case GGUF_TYPE_BOOL: return py::bool_(*(const int8_t *)p != 0);
            default: return py::none();
        }
    };
    if (t == GGUF_TYPE_STRING) return py::str(gguf_get_val_str(g, id));
    if (t != GGUF_TYPE_ARRAY) return scalar(t, gguf_get_val_data(g, id));
    gguf_type at = gguf_get_arr_type(g, id);
    size_t n = gguf_get_arr_n(g, id);
    if (n > max_array) return py::str(fmt("<array of %zu %s>", n, gguf_type_name(at)));
    py::list out;
    if (at == GGUF_TYPE_STRING) {
        for (size_t i = 0; i < n; i++) out.append(py::str(gguf_get_arr_str(g, id, i)));
    } else {
        const uint8_t *p = (const uint8_t *)gguf_get_arr_data(g, id);
        size_t sz = 0;
        switch (at) {
            case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: sz = 1; break;
            case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: sz = 2; break;
            case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: sz = 4; break;
            default: sz = 8; break;
        }
        for (size_t i = 0; i < n; i++) out.append(scalar(at, p + i * sz));
    }
    return out;
}

FileArg::FileArg(const py::handle &obj) {
    if (py::isinstance<GGUFFile>(obj)) file_ = obj.cast<std::shared_ptr<GGUFFile>>();
    else path_ = py::module_::import("os").attr("fspath")(obj).cast<std::string>();
}

std::shared_ptr<GGUFFile> FileArg::open() const { return file_ ? file_ : std::make_shared<GGUFFile>(path_); }

void bind_gguf(py::module_ &m) {
    py::class_<GGUFFile, std::shared_ptr<GGUFFile>>(m, "GGUFFile")
        .def(py::init([](const py::object &path) {
                 const std::string p = py::module_::import("os").attr("fspath")(path).cast<std::string>();
                 py::gil_scoped_release nogil;  // an LM's tokenizer arrays take a while to parse
                 return std::make_shared<GGUFFile>(p);
             }),
             py::arg("path"), "Opens a GGUF file (str or os.PathLike): metadata and tensor index only.")
        .def_property_readonly("path", &GGUFFile::path)
        .def_property_readonly("architecture", &GGUFFile::architecture)
        .def_property_readonly("hparams", &hparams_of,
                               "The typed hyperparameters of the file's kind (DiTHParams, TextEncHParams, LMHParams or "
                               "VAEHParams), read and checked against the tensors; ModelFileError where they disagree.")
        .def("expect_architecture", &GGUFFile::expect_architecture, py::arg("kind"))
        .def("metadata", [](const GGUFFile &f, size_t max_array) {
            py::dict d;
            for (int64_t i = 0; i < gguf_get_n_kv(f.gguf()); i++)
                d[py::str(gguf_get_key(f.gguf(), i))] = kv_value(f.gguf(), i, max_array);
            return d;
        }, py::arg("max_array") = 64, "All metadata; arrays longer than max_array are summarised.")
        .def("get", [](const GGUFFile &f, const std::string &key) {
            int64_t id = gguf_find_key(f.gguf(), key.c_str());
            if (id < 0) throw py::key_error(key);
            return kv_value(f.gguf(), id, SIZE_MAX);
        }, py::arg("key"))
        .def("tensors", [](const GGUFFile &f) {
            py::list out;
            for (auto &t : f.tensors()) {
                auto s = t.torch_shape();
                out.append(py::make_tuple(t.name, py::tuple(py::cast(s)), ggml_type_name(t.type)));
            }
            return out;
        }, "(name, shape in PyTorch order, ggml type name) for each tensor.")
        .def("tensor", [](const GGUFFile &f, const std::string &name) {
            const TensorInfo &t = f.require(name);
            std::vector<float> v;
            {
                py::gil_scoped_release nogil;
                v = f.read_f32(t);
            }
            auto s = t.torch_shape();
            return to_numpy(v, std::vector<ssize_t>(s.begin(), s.end()));
        }, py::arg("name"), "A tensor's values as float32 (dequantized), PyTorch shape.")
        .def("tensor_raw", [](const GGUFFile &f, const std::string &name) {
            const TensorInfo &t = f.require(name);
            py::array_t<uint8_t> out((ssize_t)t.nbytes);
            f.read(t, out.mutable_data());
            return out;
        }, py::arg("name"), "A tensor's bytes as stored in the file.");

    m.def("load_weights", [](const std::string &path, const std::string &kind,
                             const std::vector<std::tuple<std::string, std::vector<int64_t>, std::string>> &spec,
                             const std::string &device) {
        auto file = std::make_shared<GGUFFile>(path);
        file->expect_architecture(kind);
        Weights w(file, Backend::get(device, 0));
        for (auto &[name, shape, store] : spec) {
            Store st = store == "f32" ? Store::F32 : store == "f16" ? Store::F16 : Store::Keep;
            w.get(name, shape, st);
        }
        py::gil_scoped_release nogil;
        w.load();
        return w.nbytes();
    }, py::arg("path"), py::arg("kind"), py::arg("spec"), py::arg("device") = "cpu",
       "Load the named tensors ((name, PyTorch shape, 'keep'|'f32'|'f16')) of a GGUF of the given kind the way "
       "the models do, checking kind, presence, shape and type; returns the bytes allocated.");

    // The C++ models read config.json through ace::Config; this exposes it for tests.
    m.def("_config_get", [](const std::string &json, const std::string &key, const std::string &kind) -> py::object {
        Config c(json, "<config>");
        if (!c.has(key)) return py::none();
        if (kind == "int") return py::int_(c.get_int(key, 0));
        if (kind == "float") return py::float_(c.get_float(key, 0));
        if (kind == "bool") return py::bool_(c.get_bool(key, false));
        if (kind == "str") return py::str(c.get_str(key, ""));
        if (kind == "int_list") return py::cast(c.get_int_list(key, {}));
        if (kind == "str_list") return py::cast(c.get_str_list(key, {}));
        throw InputError("kind must be int, float, bool, str, int_list or str_list");
    }, py::arg("json"), py::arg("key"), py::arg("kind"));
}

}  // namespace ace

// bindings.cpp: the `acestep_ggml._core` module — backends, GGUF files, quantization.
#include "bindings.h"

#include <cstring>

#include "runtime.h"

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

py::array_t<float> to_numpy(const std::vector<float> &data, const std::vector<ssize_t> &shape) {
    py::array_t<float> out(shape);
    std::memcpy(out.mutable_data(), data.data(), data.size() * sizeof(float));
    return out;
}

static ggml_type type_from_name(const std::string &name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char *n = ggml_type_name((ggml_type)t);
        if (n && ggml_get_type_traits((ggml_type)t)->blck_size > 0 && strcasecmp(n, name.c_str()) == 0)
            return (ggml_type)t;
    }
    throw InputError(fmt("unknown ggml type '%s'", name.c_str()));
}

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

void bind_core(py::module_ &m) {
    install_log_handler();
    load_package_backends();

    // The core's errors become the classes of the package's one family (acestep_ggml.errors, pure
    // Python, imported here so that both sides raise the very same classes).
    py::module_ errors = py::module_::import("acestep_ggml.errors");
    m.attr("AcestepError") = errors.attr("AcestepError");
    m.attr("ModelFileError") = errors.attr("ModelFileError");
    m.attr("InputError") = errors.attr("InputError");
    m.attr("DeviceError") = errors.attr("DeviceError");
    py::register_exception_translator([](std::exception_ptr p) {
        auto raise = [](const char *cls, const std::exception &e) {
            py::object type = py::module_::import("acestep_ggml.errors").attr(cls);
            PyErr_SetString(type.ptr(), e.what());
        };
        try {
            if (p) std::rethrow_exception(p);
        } catch (const FileError &e) {
            raise("ModelFileError", e);
        } catch (const InputError &e) {
            raise("InputError", e);
        } catch (const DeviceError &e) {
            raise("DeviceError", e);
        } catch (const Error &e) {
            raise("AcestepError", e);
        }
    });

    m.def("backends", []() {
        py::list out;
        for (auto &d : list_devices()) {
            py::dict e;
            e["name"] = d.name;
            e["description"] = d.description;
            e["type"] = d.type;
            e["memory_free"] = d.memory_free;
            e["memory_total"] = d.memory_total;
            out.append(e);
        }
        return out;
    }, "The ggml devices compiled into this build.");

    m.def("build_info", []() {
        py::dict d;
        d["version"] = ACESTEP_VERSION;
        d["ggml_version"] = ggml_version();
        d["ggml_commit"] = ACESTEP_GGML_COMMIT;
        // The backends loaded: the CPU, GPU backends built in, plugin wheels' (load_backend).
        py::list loaded;
        for (size_t i = 0; i < ggml_backend_reg_count(); i++)
            loaded.append(lower(ggml_backend_reg_name(ggml_backend_reg_get(i))));
        d["compiled_backends"] = loaded;
        d["cpu_variant"] = cpu_variant();
        py::dict features;
        for (auto &f : cpu_features()) features[py::str(f.first)] = f.second;
        d["cpu_features"] = features;
        return d;
    });

    m.def("load_backend", &load_backend_library, py::arg("path"),
          "Load a ggml backend library (a plugin wheel's); RuntimeError saying why if it cannot.");

    py::class_<Backend, std::shared_ptr<Backend>>(m, "Backend")
        .def(py::init(&Backend::get), py::arg("device") = "cpu", py::arg("n_threads") = 0,
             "The process's backend for a device (shared with every model loaded on it).")
        .def_property_readonly("name", &Backend::name)
        .def_property_readonly("n_threads", &Backend::n_threads);

    py::class_<GGUFFile, std::shared_ptr<GGUFFile>>(m, "GGUFFile")
        .def(py::init<const std::string &>(), py::arg("path"))
        .def_property_readonly("path", &GGUFFile::path)
        .def_property_readonly("architecture", &GGUFFile::architecture)
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

PYBIND11_MODULE(_core, m) {
    m.doc() = "acestep-ggml native core: ggml graphs for ACE-Step 1.5";
    ace::bind_core(m);
    ace::bind_dit(m);
    ace::bind_text(m);
    ace::bind_vae(m);
    ace::bind_lm(m);
    ace::bind_audio_tokenizer(m);
}

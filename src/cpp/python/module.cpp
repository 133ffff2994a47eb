// module.cpp: the `acestep_ggml._core` module — error translation, backends, build info.
#include "core/backend.h"
#include "core/env.h"
#include "core/log.h"
#include "core/runtime.h"
#include "python/bindings.h"

namespace ace {

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

    m.def("memory_limit", &env::memory_limit,
          "ACESTEP_GGML_MEMORY_LIMIT in bytes (parsed by the core's one parser of the switches), -1 when unset.");

    m.def(
        "attention_mode",
        [] {
            const env::Attn a = env::attention();
            return a == env::Attn::Flash ? "flash" : a == env::Attn::Matmul ? "matmul" : "auto";
        },
        "ACESTEP_GGML_ATTN as the core reads it: 'auto', 'flash' or 'matmul' (InputError for another value).");

    m.def("load_backend", &load_backend_library, py::arg("path"),
          "Load a ggml backend library (a plugin wheel's); RuntimeError saying why if it cannot.");

    py::class_<Backend, std::shared_ptr<Backend>>(m, "Backend")
        .def(py::init(&Backend::get), py::arg("device") = "cpu", py::arg("n_threads") = 0,
             "The process's backend for a device (shared with every model loaded on it).")
        .def_property_readonly("name", &Backend::name)
        .def_property_readonly("n_threads", &Backend::n_threads);
}

}  // namespace ace

PYBIND11_MODULE(_core, m) {
    m.doc() = "acestep-ggml native core: ggml graphs for ACE-Step 1.5";
    ace::bind_core(m);
    ace::bind_hparams(m);
    ace::bind_gguf(m);
    ace::bind_types(m);
    ace::bind_dit(m);
    ace::bind_text_encoder(m);
    ace::bind_cond_encoder(m);
    ace::bind_detokenizer(m);
    ace::bind_audio_tokenizer(m);
    ace::bind_vae(m);
    ace::bind_lm(m);
}

// runtime.cpp: loading ggml's backend plugins, the CPU backend through its registry.
#include "core/runtime.h"

#include "core/error.h"
#include "core/format.h"
#include "core/log.h"
#include "ggml-backend.h"

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace ace {

namespace {

// The file that holds `address`: this extension, or a backend library.
std::string library_of(const void *address) {
#if defined(_WIN32)
    HMODULE module = nullptr;
    char path[MAX_PATH] = {0};
    if (GetModuleHandleExA(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                           (LPCSTR)address, &module))
        GetModuleFileNameA(module, path, MAX_PATH);
    return path;
#else
    Dl_info info{};
    return dladdr(address, &info) && info.dli_fname ? info.dli_fname : "";
#endif
}

std::string parent_dir(const std::string &path) {
    size_t slash = path.find_last_of("/\\");
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

ggml_backend_reg_t cpu_reg() {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("CPU");
    if (!reg) throw DeviceError("ggml's CPU backend is not loaded");
    return reg;
}

}  // namespace

void load_package_backends() {
    const std::string lib = parent_dir(library_of((const void *)&load_package_backends)) + "/lib";
    ggml_backend_load_all_from_path(lib.c_str());
    if (!ggml_backend_reg_by_name("CPU"))
        throw DeviceError(fmt("no ggml CPU backend could be loaded from %s (libggml-cpu-*): the "
                                     "package is incomplete or was built for another CPU family; %s",
                                     lib.c_str(), last_ggml_error().c_str()));
}

void load_backend_library(const std::string &path) {
    if (!ggml_backend_load(path.c_str()))
        throw DeviceError(fmt("could not load the ggml backend %s: %s", path.c_str(), last_ggml_error().c_str()));
}

std::map<std::string, std::string> cpu_features() {
    std::map<std::string, std::string> out;
    auto get = (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(cpu_reg(), "ggml_backend_get_features");
    if (!get) return out;
    for (const ggml_backend_feature *f = get(cpu_reg()); f && f->name; f++) out[lower(f->name)] = f->value;
    return out;
}

std::string cpu_variant() {
    std::string file = library_of((const void *)cpu_reg());
    file = file.substr(file.find_last_of("/\\") + 1);
    const std::string prefix = "ggml-cpu";
    size_t at = file.find(prefix);
    if (at == std::string::npos) return "native";  // linked into this extension (ACESTEP_NATIVE)
    std::string rest = file.substr(at + prefix.size());  // "-haswell.so", ".so", ".dll"
    if (rest.empty() || rest[0] != '-') return "default";
    return rest.substr(1, rest.find('.') - 1);
}

}  // namespace ace

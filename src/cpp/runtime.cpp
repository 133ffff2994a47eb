// runtime.cpp: loading ggml's backend plugins, the CPU backend through its registry, F16 rows.
#include "runtime.h"

#include <stdexcept>

#include "core.h"

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define ACE_X86_F16C 1
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
    if (!reg) throw std::runtime_error("ggml's CPU backend is not loaded");
    return reg;
}

}  // namespace

void load_package_backends() {
    const std::string lib = parent_dir(library_of((const void *)&load_package_backends)) + "/lib";
    ggml_backend_load_all_from_path(lib.c_str());
    if (!ggml_backend_reg_by_name("CPU"))
        throw std::runtime_error(fmt("no ggml CPU backend could be loaded from %s (libggml-cpu-*): the "
                                     "package is incomplete or was built for another CPU family; %s",
                                     lib.c_str(), last_ggml_error().c_str()));
}

void load_backend_library(const std::string &path) {
    if (!ggml_backend_load(path.c_str()))
        throw std::runtime_error(fmt("could not load the ggml backend %s: %s", path.c_str(), last_ggml_error().c_str()));
}

void cpu_set_n_threads(ggml_backend_t cpu, int n_threads) {
    auto set = (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(cpu_reg(), "ggml_backend_set_n_threads");
    if (set) set(cpu, n_threads);
}

std::map<std::string, std::string> cpu_features() {
    std::map<std::string, std::string> out;
    auto get = (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(cpu_reg(), "ggml_backend_get_features");
    if (!get) return out;
    for (const ggml_backend_feature *f = get(cpu_reg()); f && f->name; f++) out[lower(f->name)] = f->value;
    return out;
}

bool cpu_has(const std::string &feature) {
    static const std::map<std::string, std::string> features = cpu_features();
    auto it = features.find(feature);
    return it != features.end() && it->second != "0";
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

#if ACE_X86_F16C
namespace {
bool has_f16c() {
    static const bool yes = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
    return yes;
}

__attribute__((target("avx,f16c"))) void fp32_to_fp16_f16c(const float *x, ggml_fp16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    ggml_fp32_to_fp16_row(x + i, y + i, n - i);
}

__attribute__((target("avx,f16c"))) void fp16_to_fp32_f16c(const ggml_fp16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    ggml_fp16_to_fp32_row(x + i, y + i, n - i);
}
}  // namespace
#endif

void fp32_to_fp16_row(const float *x, ggml_fp16_t *y, int64_t n) {
#if ACE_X86_F16C
    if (has_f16c()) return fp32_to_fp16_f16c(x, y, n);
#endif
    ggml_fp32_to_fp16_row(x, y, n);
}

void fp16_to_fp32_row(const ggml_fp16_t *x, float *y, int64_t n) {
#if ACE_X86_F16C
    if (has_f16c()) return fp16_to_fp32_f16c(x, y, n);
#endif
    ggml_fp16_to_fp32_row(x, y, n);
}

}  // namespace ace

// runtime.h: what the package finds at run time.  ggml's backends are plugins (GGML_BACKEND_DL):
// the CPU backend is one library per ISA level, of which ggml loads the best one this CPU runs,
// so nothing of it is linked and every CPU-backend call goes through the backend registry.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "ggml.h"
#include "ggml-backend.h"

namespace ace {

// Loads the backends shipped in the package's lib/ folder (next to this extension): the best
// CPU variant and any GPU backend built alongside.  Throws if no CPU backend could be loaded.
void load_package_backends();
// Loads one backend library (a plugin wheel's libggml-cuda/-vulkan); throws if it cannot.
void load_backend_library(const std::string &path);

// The CPU backend's thread count (ggml_backend_cpu_set_n_threads, through the registry).
void cpu_set_n_threads(ggml_backend_t cpu, int n_threads);
// The loaded CPU variant's features as ggml reports them, lower-cased: {"avx2": "1", ...}.
// They are what that variant was compiled for, so they say which kernels run.
std::map<std::string, std::string> cpu_features();
bool cpu_has(const std::string &feature);
// The CPU variant in use: "haswell" for libggml-cpu-haswell.so, "native" for ggml linked into
// the extension (ACESTEP_NATIVE), "default" for a single libggml-cpu.so.
std::string cpu_variant();

// F32 <-> F16 rows (round to nearest even) with F16C where the CPU has it: ggml-base's own
// row conversions are scalar, and the CPU backend's fast ones are not linked.
void fp32_to_fp16_row(const float *x, ggml_fp16_t *y, int64_t n);
void fp16_to_fp32_row(const ggml_fp16_t *x, float *y, int64_t n);

}  // namespace ace

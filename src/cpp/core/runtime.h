// runtime.h: what the package finds at run time.  ggml's backends are plugins (GGML_BACKEND_DL):
// the CPU backend is one library per ISA level, of which ggml loads the best one this CPU runs,
// so nothing of it is linked and every CPU-backend call goes through the backend registry.
#pragma once

#include <map>
#include <string>

namespace ace {

// Loads the backends shipped in the package's lib/ folder (next to this extension): the best
// CPU variant and any GPU backend built alongside.  Throws if no CPU backend could be loaded.
void load_package_backends();
// Loads one backend library (a plugin wheel's libggml-cuda/-vulkan); throws if it cannot.
void load_backend_library(const std::string &path);

// The loaded CPU variant's features as ggml reports them, lower-cased: {"avx2": "1", ...}.
// They are what that variant was compiled for, so they say which kernels run.
std::map<std::string, std::string> cpu_features();
// The CPU variant in use: "haswell" for libggml-cpu-haswell.so, "native" for ggml linked into
// the extension (ACESTEP_NATIVE), "default" for a single libggml-cpu.so.
std::string cpu_variant();

}  // namespace ace

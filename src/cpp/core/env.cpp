// env.cpp: one parser for the ACESTEP_GGML_* switches.
#include "core/env.h"

#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/format.h"

namespace ace::env {

namespace {

// The variable's value; unset and empty read the same.
std::string value(const char *name) {
    const char *v = std::getenv(name);
    return v ? v : "";
}

bool flag(const char *name) {
    const std::string v = value(name);
    return !v.empty() && v != "0";
}

}  // namespace

bool verbose() { return flag("ACESTEP_GGML_VERBOSE"); }

bool strict_device() { return flag("ACESTEP_GGML_STRICT_DEVICE"); }

bool keep_bf16() { return flag("ACESTEP_GGML_KEEP_BF16"); }

bool mmap_weights() { return value("ACESTEP_GGML_MMAP") != "0"; }

int profile() {
    static const int level = flag("ACESTEP_GGML_PROFILE") ? (value("ACESTEP_GGML_PROFILE") == "2" ? 2 : 1) : 0;
    return level;
}

bool matmul_attention() {
    static const bool matmul = value("ACESTEP_GGML_ATTN") == "matmul";
    return matmul;
}

VaeOps vae_ops() {
    const std::string ops = value("ACESTEP_GGML_VAE_OPS");
    if (ops.empty()) return VaeOps::Auto;
    if (ops == "fused") return VaeOps::Fused;
    if (ops == "stock") return VaeOps::Stock;
    throw InputError(fmt("ACESTEP_GGML_VAE_OPS must be 'fused' or 'stock', got '%s'", ops.c_str()));
}

}  // namespace ace::env

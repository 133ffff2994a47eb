// env.cpp: one parser for the ACESTEP_GGML_* switches.
#include "core/env.h"

#include <climits>
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

bool int8() { return flag("ACESTEP_GGML_INT8"); }

bool mmap_weights() { return value("ACESTEP_GGML_MMAP") != "0"; }

int profile() {
    static const int level = flag("ACESTEP_GGML_PROFILE") ? (value("ACESTEP_GGML_PROFILE") == "2" ? 2 : 1) : 0;
    return level;
}

Attn attention() {
    const std::string a = value("ACESTEP_GGML_ATTN");
    if (a.empty()) return Attn::Auto;
    if (a == "flash") return Attn::Flash;
    if (a == "matmul") return Attn::Matmul;
    throw InputError(fmt("ACESTEP_GGML_ATTN must be 'flash' or 'matmul', got '%s'", a.c_str()));
}

long long memory_limit() {
    const std::string v = value("ACESTEP_GGML_MEMORY_LIMIT");
    if (v.empty()) return -1;
    size_t digits = 0;
    while (digits < v.size() && v[digits] >= '0' && v[digits] <= '9') digits++;
    const std::string suffix = v.substr(digits);
    const int shift = suffix.empty() ? 0 : suffix == "K" ? 10 : suffix == "M" ? 20 : suffix == "G" ? 30 : -1;
    if (digits == 0 || digits > 15 || shift < 0)
        throw InputError(fmt("ACESTEP_GGML_MEMORY_LIMIT must be a number of bytes, optionally with a K, M or G "
                             "suffix (e.g. 8G), got '%s'", v.c_str()));
    const long long n = std::stoll(v.substr(0, digits));  // at most 15 digits: fits
    if (n > (LLONG_MAX >> shift)) throw InputError(fmt("ACESTEP_GGML_MEMORY_LIMIT is too large: '%s'", v.c_str()));
    return n << shift;
}

VaeOps vae_ops() {
    const std::string ops = value("ACESTEP_GGML_VAE_OPS");
    if (ops.empty()) return VaeOps::Auto;
    if (ops == "fused") return VaeOps::Fused;
    if (ops == "stock") return VaeOps::Stock;
    throw InputError(fmt("ACESTEP_GGML_VAE_OPS must be 'fused' or 'stock', got '%s'", ops.c_str()));
}

}  // namespace ace::env

// backend.cpp: finding devices and creating their backends.
#include "core/backend.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <thread>

#include "core/env.h"
#include "core/error.h"
#include "core/format.h"
#include "core/log.h"

namespace ace {

std::vector<DeviceInfo> list_devices() {
    std::vector<DeviceInfo> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        DeviceInfo d;
        d.name = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU: d.type = "cpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_GPU: d.type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: d.type = "igpu"; break;
            default: d.type = "accel"; break;
        }
        ggml_backend_dev_memory(dev, &d.memory_free, &d.memory_total);
        out.push_back(d);
    }
    return out;
}

// Device names look like "CPU", "CUDA0", "Vulkan1", "MTL0"; a spec like "cuda:1"
// or "vulkan" picks the device whose lower-cased name is prefix + index.
static ggml_backend_dev_t find_device(const std::string &spec_in) {
    std::string spec = lower(spec_in);
    size_t n = ggml_backend_dev_count();
    auto first_of_type = [&](bool gpu) -> ggml_backend_dev_t {
        for (size_t i = 0; i < n; i++) {
            auto dev = ggml_backend_dev_get(i);
            auto t = ggml_backend_dev_type(dev);
            bool is_gpu = t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU;
            if (is_gpu == gpu) return dev;
        }
        return nullptr;
    };
    if (spec == "cpu") return first_of_type(false);
    if (spec == "gpu") return first_of_type(true);
    if (spec == "auto") {
        auto d = first_of_type(true);
        return d ? d : first_of_type(false);
    }
    std::string prefix = spec, index = "0";
    auto colon = spec.find(':');
    if (colon != std::string::npos) {
        prefix = spec.substr(0, colon);
        index = spec.substr(colon + 1);
    }
    if (prefix == "metal") prefix = "mtl";
    for (size_t i = 0; i < n; i++) {
        auto dev = ggml_backend_dev_get(i);
        std::string name = lower(ggml_backend_dev_name(dev));
        if (name == spec || name == prefix + index) return dev;
    }
    return nullptr;
}

// The backend's registry entry point for its thread count, as a plugin exports it.
static void set_backend_threads(ggml_backend_t backend, int n_threads) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
    auto set = reg ? (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads")
                   : nullptr;
    if (set) set(backend, n_threads);
}

// Whether the registry of `backend` lists a CPU feature (as ggml_backend_get_features reports it).
static bool has_feature(ggml_backend_t backend, const char *feature) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(backend));
    auto get = (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
    for (auto *f = get ? get(reg) : nullptr; f && f->name; f++)
        if (std::strcmp(f->name, feature) == 0) return true;
    return false;
}

std::shared_ptr<Backend> Backend::get(const std::string &spec, int n_threads) {
    static std::mutex mu;
    static std::map<std::string, std::weak_ptr<Backend>> live;  // by device name
    std::lock_guard<std::mutex> lock(mu);
    ggml_backend_dev_t dev = find_device(spec);
    if (!dev) {
        std::string names;
        for (auto &d : list_devices()) names += (names.empty() ? "" : ", ") + d.name;
        throw InputError(fmt("no ggml device matches '%s' (this build has: %s); rebuild with "
                             "-DGGML_CUDA=ON, -DGGML_VULKAN=ON or -DGGML_METAL=ON for GPU backends",
                             spec.c_str(), names.c_str()));
    }
    const std::string name = ggml_backend_dev_name(dev);
    if (auto b = live[name].lock()) {
        b->set_n_threads(n_threads);
        return b;
    }
    std::shared_ptr<Backend> b(new Backend());
    b->name_ = name;
    b->primary_ = ggml_backend_dev_init(dev, nullptr);
    if (!b->primary_) throw DeviceError(fmt("could not initialise ggml device %s: %s", b->name_.c_str(),
                                            last_ggml_error().c_str()));
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
        b->cpu_ = b->primary_;
    } else {
        b->cpu_ = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    }
    if (b->cpu_) b->cpu_bf16_ = has_feature(b->cpu_, "AVX512_BF16");
    b->set_n_threads(n_threads > 0 ? n_threads : (int)std::max(1u, std::thread::hardware_concurrency()));
    live[name] = b;
    return b;
}

void Backend::set_n_threads(int n_threads) {
    if (n_threads <= 0) return;  // as it is
    std::lock_guard<std::mutex> lock(compute_mutex_);  // not while a graph of this backend runs
    n_threads_ = n_threads;
    set_backend_threads(primary_, n_threads_);
    if (cpu_ && cpu_ != primary_) set_backend_threads(cpu_, n_threads_);
}

Backend::~Backend() {
    if (cpu_ && cpu_ != primary_) ggml_backend_free(cpu_);
    if (primary_) ggml_backend_free(primary_);
}

bool Backend::supports(const ggml_tensor *node) const {
    return ggml_backend_supports_op(primary_, node);
}

int Backend::row_pieces(ggml_type type, int64_t cols, int64_t rows, bool w_first, ggml_type other) const {
    if (is_cpu()) return 1;
    ggml_init_params p = {ggml_tensor_overhead() * 3, nullptr, /*no_alloc=*/true};
    for (int n = 1; n <= 64 && n <= rows; n *= 2) {
        ggml_context *ctx = ggml_init(p);
        ggml_tensor *piece = ggml_new_tensor_2d(ctx, type, cols, (rows + n - 1) / n);
        ggml_tensor *x = ggml_new_tensor_2d(ctx, other, cols, 8);
        const bool ok = supports(piece) && supports(w_first ? ggml_mul_mat(ctx, piece, x) : ggml_mul_mat(ctx, x, piece));
        ggml_free(ctx);
        if (ok) return n;
    }
    return 1;
}

bool Backend::multiplies(ggml_type type) const {
    ggml_init_params p = {ggml_tensor_overhead() * 4, nullptr, /*no_alloc=*/true};
    ggml_context *ctx = ggml_init(p);
    const int64_t k = 256;  // a multiple of every block size
    ggml_tensor *w = ggml_new_tensor_2d(ctx, type, k, 64);
    ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, 8);
    bool ok = supports(ggml_mul_mat(ctx, w, x));
    ggml_free(ctx);
    return ok;
}

ggml_type Backend::weight_type(ggml_type file_type, bool keep_bf16) const {
    keep_bf16 = keep_bf16 || env::keep_bf16();
    if (file_type == GGML_TYPE_BF16 && is_cpu() && !cpu_bf16_ && !keep_bf16) return GGML_TYPE_F16;
    if (multiplies(file_type)) return file_type;
    return multiplies(GGML_TYPE_F16) ? GGML_TYPE_F16 : GGML_TYPE_F32;
}

}  // namespace ace

// backend.h: compute devices.  One Backend per device per process, shared by every model loaded
// on it.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"

namespace ace {

struct DeviceInfo {
    std::string name, description, type;
    size_t memory_free = 0, memory_total = 0;
};
std::vector<DeviceInfo> list_devices();

// One compute device plus, for non-CPU devices, the CPU for what the device cannot run.
class Backend {
  public:
    // spec: "cpu", "cuda", "cuda:1", "vulkan", "vulkan:1", "metal", "gpu" (first GPU),
    // "auto" (first GPU, else the CPU).  Devices are found through ggml's device
    // registry only, so backends loaded as plugins are found the same way.  The first
    // call for a device creates its backend; later calls, from any thread, return the
    // same one while some model still holds it, with its CPU threads set to n_threads
    // (n_threads <= 0: left as they are).
    static std::shared_ptr<Backend> get(const std::string &spec, int n_threads);
    ~Backend();
    Backend(const Backend &) = delete;
    Backend &operator=(const Backend &) = delete;

    ggml_backend_t primary() const { return primary_; }
    ggml_backend_t cpu() const { return cpu_; }
    bool is_cpu() const { return primary_ == cpu_; }
    const std::string &name() const { return name_; }
    int n_threads() const { return n_threads_; }
    void set_n_threads(int n_threads);

    // Whether the device itself runs this node (ggml_backend_supports_op).
    bool supports(const ggml_tensor *node) const;
    // Into how many row pieces (1, 2, 4, ...) a matmul weight of `rows` rows of `cols` values of
    // `type` must be cut for the device to hold and multiply each piece as a tensor of its own:
    // some devices bind at most so many bytes of one tensor (Vulkan's maxStorageBufferRange:
    // 128 MiB on lavapipe, 1 GiB on some Intel GPUs).  `w_first`: the weight is the matmul's
    // first operand, else its second; `other` is the other operand's type.  1 on the CPU, and
    // where no cut of up to 64 pieces helps (Runner::alloc then names the tensor).
    int row_pieces(ggml_type type, int64_t cols, int64_t rows, bool w_first, ggml_type other) const;
    // The type a matmul weight stored as `file_type` is loaded as: the file's type where
    // the device multiplies it, else F16 (else F32).  On a CPU without native BF16 dot
    // products (no AVX512-BF16) ggml multiplies BF16 about 35% slower than F16, so BF16
    // loads as F16 there unless keep_bf16 (exact for |w| in F16's normal range,
    // 6.1e-5 .. 65504, same memory).  ACESTEP_GGML_KEEP_BF16=1 keeps BF16 everywhere
    // the device multiplies it.
    ggml_type weight_type(ggml_type file_type, bool keep_bf16 = false) const;

    // Graph computations on one backend run one at a time: a ggml backend keeps
    // per-backend scratch (the CPU's work buffer, a GPU's command queue).
    std::mutex &compute_mutex() const { return compute_mutex_; }

  private:
    Backend() = default;
    bool multiplies(ggml_type type) const;
    ggml_backend_t primary_ = nullptr, cpu_ = nullptr;
    std::string name_;
    int n_threads_ = 1;
    bool cpu_bf16_ = false;  // the CPU has native BF16 dot products
    mutable std::mutex compute_mutex_;
};

}  // namespace ace

// state.h: tensors that stay on the device across graph runs (a generation's conditions, a KV
// cache): declared in a context of their own, then allocated together in one backend buffer.
// Graphs read and write them like weights; the scheduler never reuses their memory.
#pragma once

#include <memory>
#include <vector>

#include "core/backend.h"

namespace ace {

class DeviceTensors {
  public:
    DeviceTensors(std::shared_ptr<Backend> backend, size_t max_tensors);
    ~DeviceTensors();
    DeviceTensors(const DeviceTensors &) = delete;
    DeviceTensors &operator=(const DeviceTensors &) = delete;

    // Declares a tensor (shape in PyTorch order); only before alloc().
    ggml_tensor *add(const char *name, ggml_type type, const std::vector<int64_t> &torch_shape);
    // One buffer for all declared tensors; DeviceError naming `what` when it does not fit.
    void alloc(const char *what);
    size_t nbytes() const;

  private:
    std::shared_ptr<Backend> backend_;
    ggml_context *ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
};

}  // namespace ace

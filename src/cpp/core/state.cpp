// state.cpp: device tensors that outlive graphs.
#include "core/state.h"

#include "core/error.h"
#include "core/format.h"
#include "ggml-alloc.h"

namespace ace {

DeviceTensors::DeviceTensors(std::shared_ptr<Backend> backend, size_t max_tensors) : backend_(std::move(backend)) {
    ggml_init_params p = {max_tensors * ggml_tensor_overhead(), nullptr, /*no_alloc=*/true};
    ctx_ = ggml_init(p);
    if (!ctx_) throw DeviceError("could not create a ggml context (out of host memory)");
}

DeviceTensors::~DeviceTensors() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    ggml_free(ctx_);
}

ggml_tensor *DeviceTensors::add(const char *name, ggml_type type, const std::vector<int64_t> &s) {
    if (buffer_) throw Error("DeviceTensors: tensor declared after alloc()");
    int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < s.size(); i++) ne[i] = s[s.size() - 1 - i];
    ggml_tensor *t = ggml_new_tensor(ctx_, type, (int)s.size(), ne);
    ggml_set_name(t, name);
    return t;
}

void DeviceTensors::alloc(const char *what) {
    buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, backend_->primary());
    if (!buffer_) throw DeviceError(fmt("cannot allocate %s on %s", what, backend_->name().c_str()));
}

size_t DeviceTensors::nbytes() const { return buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0; }

}  // namespace ace

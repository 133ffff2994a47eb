// weights.h: the backend tensors of one model, declared by name, then loaded in one go.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/gguf_file.h"

namespace ace {

enum class Store {
    Keep,  // the file's type (BF16, Q8_0, ...): matmul weights, in a type the device
           // multiplies (see Backend::weight_type, Weights::keep_bf16)
    F32,   // converted to F32 at load: norms, biases, tables used in element-wise ops
    F16,   // converted to F16 at load: convolution kernels
};

class Weights {
  public:
    Weights(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend);
    ~Weights();
    Weights(const Weights &) = delete;
    Weights &operator=(const Weights &) = delete;

    // A tensor from the file, checked against the expected PyTorch-order shape.
    ggml_tensor *get(const std::string &name, const std::vector<int64_t> &torch_shape, Store store = Store::Keep);
    // Keep BF16 matmul weights as BF16 even where the CPU would prefer F16: for
    // memory-bound decoding (one or two rows), where BF16 dot products measured faster.
    void keep_bf16() { keep_bf16_ = true; }
    // A tensor computed at load time from file data (e.g. folding weight norm).
    ggml_tensor *derived(const std::string &name, ggml_type type, const std::vector<int64_t> &torch_shape,
                         std::function<std::vector<float>()> compute);
    // Fills every declared tensor.  On the CPU (unless ACESTEP_GGML_MMAP=0), a tensor whose
    // stored type is its run-time type is served straight from the file's copy-on-write mapping
    // (GGUFFile::mapping): no copy, no second resident image, and a write into it (an adapter
    // merged into a weight) stays private to the process.  The others (converted at load,
    // derived) get one backend buffer and are read into it.
    void load();

    // Loaded tensors by name, for adapters merged into them (FileError when `name` was not
    // declared): the values as F32 (dequantized), new values encoded in the tensor's own type
    // (ggml's converters and quantizers), and the values load() gave it.
    std::vector<float> read(const std::string &name) const;
    void write(const std::string &name, std::vector<float> values);
    void restore(const std::string &name);
    // A tensor served from the file's mapping leaves the resident set (its pages come back from the
    // file if it is read again): for a weight whose values now live elsewhere (nn/int8_matmul.h).
    void evict(const std::string &name);

    GGUFFile &file() const { return *file_; }
    const std::shared_ptr<Backend> &backend() const { return backend_; }
    // Bytes of the weights, copied or mapped; mapped_bytes() of them served from the mapping.
    size_t nbytes() const;
    size_t mapped_bytes() const { return mapped_bytes_; }

  private:
    struct Entry {
        std::string name;
        ggml_tensor *tensor;
        const TensorInfo *info;                      // from the file, or null for derived
        std::function<std::vector<float>()> compute;  // derived only
    };
    const Entry &entry(const std::string &name) const;
    void fill(const Entry &e, std::vector<uint8_t> &staging, bool host);
    ggml_tensor *new_tensor(const std::string &name, ggml_type type, const std::vector<int64_t> &torch_shape);

    std::shared_ptr<GGUFFile> file_;
    std::shared_ptr<Backend> backend_;
    ggml_context *ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    ggml_backend_buffer_t mapped_ = nullptr;  // over the file's mapping, which the file owns
    size_t mapped_bytes_ = 0;
    bool loaded_ = false;
    std::vector<Entry> entries_;
    bool keep_bf16_ = false;
};

}  // namespace ace

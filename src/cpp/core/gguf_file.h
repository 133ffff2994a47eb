// gguf_file.h: a GGUF file's metadata and tensor index; tensor data stays in the file until read.
// Opened once and shared (std::shared_ptr) by every model built from it.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "ggml.h"
#include "gguf.h"

namespace ace {

struct TensorInfo {
    std::string name;
    ggml_type type = GGML_TYPE_F32;
    int n_dims = 0;
    int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
    size_t offset = 0;  // absolute, in the file
    size_t nbytes = 0;
    std::vector<int64_t> torch_shape() const;
    int64_t numel() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

class GGUFFile {
  public:
    // Throws FileError naming the path when the file is missing, not a GGUF, corrupt or truncated.
    explicit GGUFFile(const std::string &path);
    ~GGUFFile();
    GGUFFile(const GGUFFile &) = delete;
    GGUFFile &operator=(const GGUFFile &) = delete;

    const std::string &path() const { return path_; }
    std::string architecture() const;
    // Throws FileError unless general.architecture == kind.
    void expect_architecture(const std::string &kind) const;

    bool has_key(const std::string &key) const;
    int64_t key_id(const std::string &key) const;  // throws when missing
    // Typed reads of a present key (FileError naming it when it is missing or of another type).
    // Model hyperparameters are read through core/hparams.h, which holds the fallbacks.
    uint32_t get_u32(const std::string &key) const;
    float get_f32(const std::string &key) const;
    bool get_bool(const std::string &key) const;
    std::string get_str(const std::string &key) const;
    std::string get_str(const std::string &key, const std::string &fallback) const;
    std::vector<int64_t> get_int_array(const std::string &key) const;
    std::vector<std::string> get_str_array(const std::string &key) const;
    gguf_context *gguf() const { return gguf_; }

    const std::vector<TensorInfo> &tensors() const { return tensors_; }
    const TensorInfo *find(const std::string &name) const;
    const TensorInfo &require(const std::string &name) const;  // throws FileError naming the tensor

    // The descriptor the file stays open on from construction to destruction: every read of its
    // tensors (here and by Weights' pread workers) goes through it, so a file is opened once.
    int fd() const { return fd_; }
    void read(const TensorInfo &t, void *dst) const;  // raw bytes
    std::vector<float> read_f32(const TensorInfo &t) const;  // dequantized
    std::vector<float> read_f32(const std::string &name) const { return read_f32(require(name)); }

    // The whole file mapped copy-on-write (MAP_PRIVATE, readable and writable): writes through it
    // stay in this process and never reach the file.  Made on the first call, unmapped with the
    // file; nullptr where the system refuses the mapping.  The file must not be truncated while
    // mapped: reading a page past its new end raises SIGBUS (check_size catches it at each load).
    uint8_t *mapping();
    // Users of the mapping, per tensor: a model serving a tensor from the mapping holds it from
    // load to destruction.  When a tensor's last user lets go, the whole pages inside its bytes
    // leave the process (madvise MADV_DONTNEED): a freed model's weights stop counting in the
    // resident set while the file stays open for another model (the page cache keeps the
    // data; a write an adapter made into them is dropped with the model that made it).
    void hold(const TensorInfo &t);
    void let_go(const TensorInfo &t);
    // Drops the tensor's pages of the mapping from the resident set (MADV_DONTNEED: a page not
    // written comes back from the file when touched; one written loses its changes).
    void drop_pages(const TensorInfo &t);
    int holders(const TensorInfo &t);  // models holding the tensor (hold() minus let_go())
    size_t size() const { return size_; }
    // Throws FileError when the file has become shorter than the tensors' extent since it was
    // opened (truncated or rewritten in place).
    void check_size() const;

  private:
    std::string path_;
    int fd_ = -1;
    size_t size_ = 0;     // at open
    size_t extent_ = 0;   // the end of the last tensor's data
    uint8_t *map_ = nullptr;
    std::once_flag map_once_;
    std::mutex holds_mu_;
    std::map<size_t, int> holds_;  // users per tensor, by its offset in the file
    gguf_context *gguf_ = nullptr;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t> index_;
};

}  // namespace ace

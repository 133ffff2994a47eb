// core.h: what every model shares — errors, backends, GGUF files, weights, graph execution.
//
// Shapes: ggml stores dimensions innermost-first (ne[0] is the contiguous one), the
// reverse of PyTorch.  Everything in this project that takes a shape from a caller
// takes it in PyTorch order ("torch shape") and reverses it in one place, here.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "ggml.h"
#include "ggml-backend.h"
#include "gguf.h"

namespace ace {

// The base of every error the core throws on purpose; the bindings turn each kind into its
// class of the Python family (acestep_ggml.errors), and a bare Error into AcestepError.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A model file is missing, corrupt, of the wrong kind, or lacks/misshapes a tensor.
struct FileError : Error {
    using Error::Error;
};
// A caller passed something the models cannot take (shape, range, value).
struct InputError : Error {
    using Error::Error;
};

// printf-style formatting for error messages.
std::string fmt(const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

std::string lower(std::string s);

// "[2048, 1024]" in PyTorch order.
std::string shape_str(const std::vector<int64_t> &torch_shape);

// Route ggml's log through us: quiet unless ACESTEP_GGML_VERBOSE is set; the last
// error line is kept so that exceptions can quote what ggml said.
void install_log_handler();
std::string last_ggml_error();

// ---------------------------------------------------------------------------
// Backends

struct DeviceInfo {
    std::string name, description, type;
    size_t memory_free = 0, memory_total = 0;
};
std::vector<DeviceInfo> list_devices();

// The graph of a model asked for a node on a backend other than its device while the
// strict-device switch is on (ACESTEP_GGML_STRICT_DEVICE=1).
struct DeviceError : Error {
    using Error::Error;
};

// One compute device plus, for non-CPU devices, the CPU for what the device cannot
// run.  One per device per process, shared by every model loaded on it.
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

// ACESTEP_GGML_STRICT_DEVICE=1: every graph node of every model must run on the
// model's device (input uploads and output downloads are the only copies allowed),
// else Runner::alloc throws DeviceError naming the op.  Read at every alloc, so tests
// may switch it per test.
bool strict_device();

// ---------------------------------------------------------------------------
// A checkpoint's config.json (stored as `acestep.config_json`): top-level keys of a
// JSON object, read as the models need them.  Missing keys take the caller's fallback;
// a present key of the wrong type is a FileError naming the key.

class Config {
  public:
    Config() = default;
    // Throws FileError (prefixed with `where`) on malformed JSON or a non-object.
    Config(const std::string &json, const std::string &where);

    bool has(const std::string &key) const { return values_.count(key) != 0; }
    int64_t get_int(const std::string &key, int64_t fallback) const;
    double get_float(const std::string &key, double fallback) const;
    bool get_bool(const std::string &key, bool fallback) const;
    std::string get_str(const std::string &key, const std::string &fallback) const;
    std::vector<int64_t> get_int_list(const std::string &key, const std::vector<int64_t> &fallback) const;
    std::vector<std::string> get_str_list(const std::string &key, const std::vector<std::string> &fallback) const;

    struct Value {
        enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
        double number = 0;
        bool is_integer = false;
        std::string text;           // String
        std::vector<Value> items;   // Array
    };

  private:
    const Value *find(const std::string &key, Value::Kind kind) const;
    std::string where_;
    std::map<std::string, Value> values_;
};

// ---------------------------------------------------------------------------
// GGUF files

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

// Metadata and a tensor index; tensor data stays in the file until read.
class GGUFFile {
  public:
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
    uint32_t get_u32(const std::string &key) const;
    uint32_t get_u32(const std::string &key, uint32_t fallback) const;
    float get_f32(const std::string &key) const;
    float get_f32(const std::string &key, float fallback) const;
    bool get_bool(const std::string &key, bool fallback) const;
    std::string get_str(const std::string &key) const;
    std::string get_str(const std::string &key, const std::string &fallback) const;
    std::vector<int64_t> get_int_array(const std::string &key) const;
    std::vector<std::string> get_str_array(const std::string &key) const;
    gguf_context *gguf() const { return gguf_; }
    // The embedded config.json (empty when the file has none).
    Config config() const;

    const std::vector<TensorInfo> &tensors() const { return tensors_; }
    const TensorInfo *find(const std::string &name) const;
    const TensorInfo &require(const std::string &name) const;  // throws FileError naming the tensor

    void read(const TensorInfo &t, void *dst) const;  // raw bytes
    std::vector<float> read_f32(const TensorInfo &t) const;  // dequantized
    std::vector<float> read_f32(const std::string &name) const { return read_f32(require(name)); }

  private:
    std::string path_;
    gguf_context *gguf_ = nullptr;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t> index_;
};

// Converts n values of any float or quantized ggml type to float.
void to_float(ggml_type type, const void *src, float *dst, int64_t n);
bool is_weight_type(ggml_type type);  // float or block-quantized: what a weight may be stored as

// ---------------------------------------------------------------------------
// Weights: backend tensors of one model, declared by name, then loaded in one go.

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
    bool has(const std::string &name) const { return file_->find(name) != nullptr; }
    // Keep BF16 matmul weights as BF16 even where the CPU would prefer F16: for
    // memory-bound decoding (one or two rows), where BF16 dot products measured faster.
    void keep_bf16() { keep_bf16_ = true; }
    // A tensor computed at load time from file data (e.g. folding weight norm).
    ggml_tensor *derived(const std::string &name, ggml_type type, const std::vector<int64_t> &torch_shape,
                         std::function<std::vector<float>()> compute);
    // Allocates one backend buffer and fills every declared tensor.
    void load();

    GGUFFile &file() const { return *file_; }
    const std::shared_ptr<Backend> &backend() const { return backend_; }
    size_t nbytes() const;

  private:
    struct Entry {
        ggml_tensor *tensor;
        const TensorInfo *info;                      // from the file, or null for derived
        std::function<std::vector<float>()> compute;  // derived only
    };
    ggml_tensor *new_tensor(const std::string &name, ggml_type type, const std::vector<int64_t> &torch_shape);

    std::shared_ptr<GGUFFile> file_;
    std::shared_ptr<Backend> backend_;
    ggml_context *ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::vector<Entry> entries_;
    bool keep_bf16_ = false;
};

// ---------------------------------------------------------------------------
// Graphs: a context of tensor metadata plus a graph, then scheduled on a backend.

class Graph {
  public:
    explicit Graph(size_t max_nodes = 16384);
    ~Graph();
    Graph(const Graph &) = delete;
    Graph &operator=(const Graph &) = delete;

    ggml_context *ctx() const { return ctx_; }
    ggml_cgraph *graph() const { return graph_; }
    // An input tensor, shape in PyTorch order.
    ggml_tensor *input(const char *name, ggml_type type, const std::vector<int64_t> &torch_shape);
    void output(ggml_tensor *t);

  private:
    ggml_context *ctx_ = nullptr;
    ggml_cgraph *graph_ = nullptr;
};

// Runs graphs on a Backend through a scheduler that keeps its allocation between
// calls of the same shape.
class Runner {
  public:
    explicit Runner(std::shared_ptr<Backend> backend, size_t max_nodes = 16384);
    ~Runner();
    Runner(const Runner &) = delete;
    Runner &operator=(const Runner &) = delete;

    // Allocates the graph's intermediate tensors; inputs may be set afterwards.
    void alloc(Graph &g);
    void compute(Graph &g);
    const std::shared_ptr<Backend> &backend() const { return backend_; }
    // Bytes of the device's compute buffer after the last alloc().
    size_t compute_bytes() const;

  private:
    std::shared_ptr<Backend> backend_;
    ggml_backend_sched_t sched_ = nullptr;
};

// Host <-> backend copies with shape checks.
void set_input(ggml_tensor *t, const float *data, size_t n);
void set_input(ggml_tensor *t, const int32_t *data, size_t n);
std::vector<float> get_output(const ggml_tensor *t);

}  // namespace ace

// graph.h: graphs, a context of tensor metadata plus a graph, scheduled on a backend by a Runner
// that keeps its allocation between calls of the same shape.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "ggml.h"

namespace ace {

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

class Runner {
  public:
    explicit Runner(std::shared_ptr<Backend> backend, size_t max_nodes = 16384);
    ~Runner();
    Runner(const Runner &) = delete;
    Runner &operator=(const Runner &) = delete;

    // Allocates the graph's intermediate tensors; inputs may be set afterwards.  Throws
    // DeviceError where the device cannot hold or run a node (see ACESTEP_GGML_STRICT_DEVICE).
    void alloc(Graph &g);
    void compute(Graph &g);
    const std::shared_ptr<Backend> &backend() const { return backend_; }
    // Bytes of the device's compute buffer after the last alloc().
    size_t compute_bytes() const;

  private:
    std::shared_ptr<Backend> backend_;
    ggml_backend_sched_t sched_ = nullptr;
};

// Host -> backend copies of n values, checked against the tensor's size and type: float into F32
// or F16 (converted), F16 masks, I32 ids and positions, I64 rows.
void set_input(ggml_tensor *t, const float *data, size_t n);
void set_input(ggml_tensor *t, const ggml_fp16_t *data, size_t n);
void set_input(ggml_tensor *t, const int32_t *data, size_t n);
void set_input(ggml_tensor *t, const int64_t *data, size_t n);
// Backend -> host, as float.
std::vector<float> get_output(const ggml_tensor *t);

}  // namespace ace

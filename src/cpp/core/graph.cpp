// graph.cpp: graph construction, scheduling with device checks, host <-> device copies.
#include "core/graph.h"

#include "core/env.h"
#include "core/error.h"
#include "core/format.h"
#include "core/log.h"
#include "core/profile.h"
#include "core/types.h"

namespace ace {

Graph::Graph(size_t max_nodes) {
    ggml_init_params p = {/*mem_size=*/ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false),
                          /*mem_buffer=*/nullptr, /*no_alloc=*/true};
    ctx_ = ggml_init(p);
    graph_ = ggml_new_graph_custom(ctx_, max_nodes, false);
}

Graph::~Graph() {
    if (ctx_) ggml_free(ctx_);
}

ggml_tensor *Graph::input(const char *name, ggml_type type, const std::vector<int64_t> &s) {
    int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < s.size(); i++) ne[i] = s[s.size() - 1 - i];
    ggml_tensor *t = ggml_new_tensor(ctx_, type, (int)s.size(), ne);
    ggml_set_name(t, name);
    ggml_set_input(t);
    return t;
}

void Graph::output(ggml_tensor *t) {
    ggml_set_output(t);
    ggml_build_forward_expand(graph_, t);
}

Runner::Runner(std::shared_ptr<Backend> backend, size_t max_nodes) : backend_(std::move(backend)) {
    std::vector<ggml_backend_t> backends = {backend_->primary()};
    if (!backend_->is_cpu() && backend_->cpu()) backends.push_back(backend_->cpu());
    sched_ = ggml_backend_sched_new(backends.data(), nullptr, (int)backends.size(), max_nodes, false, true);
    if (!sched_) throw DeviceError(fmt("could not create a ggml scheduler on %s", backend_->name().c_str()));
}

size_t Runner::compute_bytes() const { return ggml_backend_sched_get_buffer_size(sched_, backend_->primary()); }

// Ops that compute nothing: a view of an input on the CPU is part of its upload.
static bool is_view(const ggml_tensor *t) {
    switch (t->op) {
        case GGML_OP_NONE: case GGML_OP_VIEW: case GGML_OP_RESHAPE: case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE:
            return true;
        default:
            return false;
    }
}

// The tensor whose memory t is (a view's source), if that memory is the device's, not the host's.
static const ggml_tensor *held(const ggml_tensor *t) {
    const ggml_tensor *base = t->view_src ? t->view_src : t;
    return base->buffer && !ggml_backend_buffer_is_host(base->buffer) ? base : nullptr;
}

void Runner::alloc(Graph &g) {
    ggml_backend_sched_reset(sched_);
    if (!backend_->is_cpu()) {
        for (int i = 0; i < ggml_graph_n_nodes(g.graph()); i++) {
            ggml_tensor *node = ggml_graph_node(g.graph(), i);
            // ggml's scheduler aborts the process on a tensor in the device's memory that the
            // device cannot use (one too large to bind, say), or on an op it cannot run that
            // reads such a tensor (it cannot be moved to the CPU): named here first, as errors.
            const ggml_tensor *operand = nullptr;
            for (int k = 0; k < GGML_MAX_SRC; k++) {  // an optional operand may be absent before a later one
                const ggml_tensor *w = node->src[k] ? held(node->src[k]) : nullptr;
                if (w && !backend_->supports(w))
                    throw DeviceError(fmt("%s cannot use the tensor '%s' (%s, %.1f MiB) held in its memory: it may be "
                                          "larger than the device binds at once", backend_->name().c_str(),
                                          ggml_get_name(w), ggml_type_name(w->type), ggml_nbytes(w) / 1048576.0));
                if (w) operand = w;
            }
            if (is_view(node) || backend_->supports(node)) continue;
            if (env::strict_device())
                throw DeviceError(fmt("ACESTEP_GGML_STRICT_DEVICE: op %s (node '%s') runs on %s, not on the device %s, "
                                      "which does not support it", ggml_op_desc(node), ggml_get_name(node),
                                      backend_->cpu() ? ggml_backend_name(backend_->cpu()) : "no backend",
                                      backend_->name().c_str()));
            if (operand)
                throw DeviceError(fmt("op %s (node '%s') cannot run on %s, which holds its operand '%s' (%.1f MiB)",
                                      ggml_op_desc(node), ggml_get_name(node), backend_->name().c_str(),
                                      ggml_get_name(operand), ggml_nbytes(operand) / 1048576.0));
        }
    }
    if (!ggml_backend_sched_alloc_graph(sched_, g.graph()))
        throw DeviceError(fmt("could not allocate compute memory on %s: %s", backend_->name().c_str(),
                                     last_ggml_error().c_str()));
    if (backend_->is_cpu() || !env::strict_device()) return;
    for (int i = 0; i < ggml_graph_n_nodes(g.graph()); i++) {
        ggml_tensor *node = ggml_graph_node(g.graph(), i);
        ggml_backend_t on = ggml_backend_sched_get_tensor_backend(sched_, node);
        if (on != backend_->primary() && !is_view(node))
            throw DeviceError(fmt("ACESTEP_GGML_STRICT_DEVICE: op %s (node '%s') runs on %s, not on the device %s%s",
                                  ggml_op_desc(node), ggml_get_name(node), on ? ggml_backend_name(on) : "no backend",
                                  backend_->name().c_str(),
                                  backend_->supports(node) ? "" : ", which does not support it"));
    }
}

Runner::~Runner() {
    if (sched_) ggml_backend_sched_free(sched_);
    if (profile::enabled()) profile::forget(this);
}

void Runner::compute(Graph &g) {
    if (profile::enabled())
        profile::start(sched_, this, compute_bytes(), backend_->name(), ggml_graph_n_nodes(g.graph()));
    std::lock_guard<std::mutex> lock(backend_->compute_mutex());
    ggml_status st = ggml_backend_sched_graph_compute(sched_, g.graph());
    if (st != GGML_STATUS_SUCCESS)
        throw DeviceError(fmt("graph computation failed on %s (status %d): %s", backend_->name().c_str(),
                                     (int)st, last_ggml_error().c_str()));
}

// Before a copy into t: n values, of t's element type, into memory the graph's allocation gave t
// (ggml aborts on a tensor without a buffer, such as an input the graph does not use).
static void check_input(const ggml_tensor *t, size_t n, ggml_type type) {
    if ((int64_t)n != ggml_nelements(t))
        throw InputError(fmt("input '%s' needs %lld values, got %zu", ggml_get_name(t),
                             (long long)ggml_nelements(t), n));
    if (t->type != type)
        throw Error(fmt("set_input: input '%s' is %s, not %s", ggml_get_name(t), ggml_type_name(t->type),
                        ggml_type_name(type)));
    if (!(t->view_src ? t->view_src->buffer : t->buffer))
        throw Error(fmt("set_input: input '%s' has no memory: it is not part of the allocated graph",
                        ggml_get_name(t)));
}

void set_input(ggml_tensor *t, const float *data, size_t n) {
    if (t->type == GGML_TYPE_F16) {
        std::vector<ggml_fp16_t> h(n);
        fp32_to_fp16_row(data, h.data(), (int64_t)n);
        return set_input(t, h.data(), n);
    }
    check_input(t, n, GGML_TYPE_F32);
    ggml_backend_tensor_set(t, data, 0, n * sizeof(float));
}

void set_input(ggml_tensor *t, const ggml_fp16_t *data, size_t n) {
    check_input(t, n, GGML_TYPE_F16);
    ggml_backend_tensor_set(t, data, 0, n * sizeof(ggml_fp16_t));
}

void set_input(ggml_tensor *t, const int32_t *data, size_t n) {
    check_input(t, n, GGML_TYPE_I32);
    ggml_backend_tensor_set(t, data, 0, n * sizeof(int32_t));
}

void set_input(ggml_tensor *t, const int64_t *data, size_t n) {
    check_input(t, n, GGML_TYPE_I64);
    ggml_backend_tensor_set(t, data, 0, n * sizeof(int64_t));
}

std::vector<float> get_output(const ggml_tensor *t) {
    std::vector<float> out(ggml_nelements(t));
    if (t->type == GGML_TYPE_F32 && ggml_is_contiguous(t)) {
        ggml_backend_tensor_get(t, out.data(), 0, out.size() * sizeof(float));
        return out;
    }
    if (!ggml_is_contiguous(t)) throw Error(fmt("get_output: output '%s' is not contiguous", ggml_get_name(t)));
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    to_float(t->type, raw.data(), out.data(), (int64_t)out.size());
    return out;
}

}  // namespace ace

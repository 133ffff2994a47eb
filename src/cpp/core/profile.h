// profile.h: ACESTEP_GGML_PROFILE=1: every node is computed on its own and timed; totals per op
// (matmuls per weight type; =2 also per shape) go to stderr at exit.  For finding where the time
// goes only: splitting the graph costs a little time per node.  Each runner's compute buffer is
// printed whenever it grows, for finding where the memory goes.
#pragma once

#include <cstddef>
#include <string>

#include "ggml-backend.h"

namespace ace::profile {

bool enabled();
// Before a graph of `runner` (any stable address) runs on sched: times its nodes from now on,
// and prints its compute buffer if larger than any before on that runner.
void start(ggml_backend_sched_t sched, const void *runner, size_t buffer_bytes, const std::string &device,
           int n_nodes);
// The runner is gone: its address may be reused by another.
void forget(const void *runner);

}  // namespace ace::profile

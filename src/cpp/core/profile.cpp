// profile.cpp: per-op timing through the scheduler's eval callback, and compute-buffer sizes.
#include "core/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "core/env.h"
#include "core/format.h"

namespace ace::profile {

namespace {

struct Profile {
    std::mutex mu;
    std::map<std::string, std::pair<double, long>> ops;  // seconds, count
    double last = 0;
    std::map<const void *, size_t> buffers;  // the largest compute buffer printed per live runner

    static double now() {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    }
    static Profile &get() {
        static Profile *p = [] {
            auto *q = new Profile;
            std::atexit([] { get().print(); });
            return q;
        }();
        return *p;
    }
    static bool observe(ggml_tensor *t, bool ask, void *) {
        if (ask) return true;
        Profile &p = get();
        double t1 = now();
        std::string key = ggml_op_desc(t);
        const bool detail = env::profile() == 2;
        if (t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID) {
            const ggml_tensor *a = t->src[0], *b = t->src[1];
            key += fmt("(%s)", ggml_type_name(a->type));
            if (detail)  // shapes too, [K, M] x [K, N] (x batch)
                key += fmt(" %lldx%lld * %lldx%lld x%lld", (long long)a->ne[0], (long long)a->ne[1],
                           (long long)b->ne[0], (long long)b->ne[1], (long long)(b->ne[2] * b->ne[3]));
        } else if (t->op == GGML_OP_CUSTOM && detail) {
            key += fmt(" %lldx%lld", (long long)t->ne[0], (long long)t->ne[1]);
        }
        std::lock_guard<std::mutex> lock(p.mu);
        auto &e = p.ops[key];
        e.first += t1 - p.last;
        e.second += 1;
        p.last = t1;
        return true;
    }
    // Prints a runner's compute buffer when it is larger than any before on that runner.
    void buffer(const void *runner, size_t bytes, const std::string &device, int n_nodes) {
        std::lock_guard<std::mutex> lock(mu);
        size_t &seen = buffers[runner];
        if (bytes <= seen) return;
        seen = bytes;
        std::fprintf(stderr, "acestep-ggml profile: compute buffer %.1f MiB on %s (graph of %d nodes)\n",
                     bytes / 1048576.0, device.c_str(), n_nodes);
    }
    void print() {
        std::vector<std::pair<std::string, std::pair<double, long>>> v(ops.begin(), ops.end());
        std::sort(v.begin(), v.end(), [](auto &a, auto &b) { return a.second.first > b.second.first; });
        double total = 0;
        for (auto &e : v) total += e.second.first;
        std::fprintf(stderr, "acestep-ggml profile: %.3f s in %zu op kinds\n", total, v.size());
        for (auto &e : v)
            std::fprintf(stderr, "  %-40s %9.3f s %5.1f%% %8ld nodes\n", e.first.c_str(), e.second.first,
                         100 * e.second.first / (total > 0 ? total : 1), e.second.second);
    }
};

}  // namespace

bool enabled() { return env::profile() > 0; }

void start(ggml_backend_sched_t sched, const void *runner, size_t buffer_bytes, const std::string &device,
           int n_nodes) {
    ggml_backend_sched_set_eval_callback(sched, Profile::observe, nullptr);
    Profile::get().last = Profile::now();
    Profile::get().buffer(runner, buffer_bytes, device, n_nodes);
}

void forget(const void *runner) {
    std::lock_guard<std::mutex> lock(Profile::get().mu);
    Profile::get().buffers.erase(runner);
}

}  // namespace ace::profile

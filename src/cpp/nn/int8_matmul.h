// int8_matmul.h: Linear products in 8-bit integers on CPUs with AVX-512 VNNI.
//
// The weight of each Linear is quantized once, at load, per output channel (absmax / 127, symmetric)
// and packed for the kernel; the activations are quantized per row when the graph runs (absmax /
// 127, stored unsigned with an offset of 128), and the products are summed in int32 by vpdpbusd,
// which multiplies twice as many pairs per instruction as vdpbf16ps does in BF16.  Each output is
// then (Σ q_x q_w) · s_x · s_w, exact up to the two roundings.  Opt-in (ACESTEP_GGML_INT8, see
// core/env.h); the reference runs in F32 or BF16, so this is a trade of accuracy for speed whose
// cost tests/test_int8.py measures against diffusers.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/weights.h"

namespace ace {

struct Linear;

// Whether this CPU runs the kernels (AVX-512 F, BW, VL and VNNI), whatever the build's flags.
bool int8_matmul_supported();

// The packed copies of some Linears' weights, in one CPU buffer of their own.  Each Linear's
// `packed` points into it; the Linears compute through int8_matmul() while it is set.
class Int8Linears {
  public:
    // Packs the weight of each Linear (read through Weights::read: any stored type), using n_threads
    // threads; a weight served from the file's mapping then leaves the resident set.
    Int8Linears(Weights &weights, const std::vector<Linear *> &linears, int n_threads);
    ~Int8Linears();
    Int8Linears(const Int8Linears &) = delete;
    Int8Linears &operator=(const Int8Linears &) = delete;

    // Packs `lin` again from its weight's current values (after an adapter was merged into it).
    void repack(const Linear &lin) const;
    size_t nbytes() const;

  private:
    ggml_context *ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    int n_threads_ = 1;
};

// The Linears' weights in int8 where ACESTEP_GGML_INT8 asks for it (else null), for a model whose
// weights were just loaded; DeviceError on a device or CPU that cannot run the kernels.
std::unique_ptr<Int8Linears> int8_if_asked(Weights &weights, const std::vector<Linear *> &linears);

// w [n_out, in] times each row of x [rows, in] through the packing and the graph ops above, on
// the CPU backend with n_threads threads: [rows, n_out], row-major (for tests of the kernels).
std::vector<float> int8_matmul_host(const std::vector<float> &w, int64_t n_out, int64_t in, const std::vector<float> &x,
                                    int64_t rows, int n_threads);

// W x for a packed weight of n_out output channels and x F32 [in, rows]: F32 [n_out, rows].
ggml_tensor *int8_matmul(ggml_context *ctx, ggml_tensor *packed, ggml_tensor *x, int64_t n_out);

}  // namespace ace

// types.h: converting values between ggml's tensor types on the host.
#pragma once

#include <cstdint>

#include "ggml.h"

namespace ace {

// Converts n values of any float or quantized ggml type to float.
void to_float(ggml_type type, const void *src, float *dst, int64_t n);
// Float or block-quantized: what a weight may be stored as.
bool is_weight_type(ggml_type type);

// F32 <-> F16 rows (round to nearest even) with F16C where the CPU has it: ggml-base's own
// row conversions are scalar, and the CPU backend's fast ones are not linked (its library is a
// plugin, see runtime.h).
void fp32_to_fp16_row(const float *x, ggml_fp16_t *y, int64_t n);
void fp16_to_fp32_row(const ggml_fp16_t *x, float *y, int64_t n);

}  // namespace ace

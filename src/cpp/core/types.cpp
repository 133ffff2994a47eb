// types.cpp: type conversions on the host.
#include "core/types.h"

#include <cstring>

#include "core/error.h"
#include "core/format.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define ACE_X86_F16C 1
#endif

namespace ace {

bool is_weight_type(ggml_type type) {
    switch (type) {
        case GGML_TYPE_I8: case GGML_TYPE_I16: case GGML_TYPE_I32: case GGML_TYPE_I64: case GGML_TYPE_F64:
            return false;
        default:
            return type == GGML_TYPE_F32 ||
                   (type < GGML_TYPE_COUNT && ggml_get_type_traits(type)->to_float != nullptr);
    }
}

void to_float(ggml_type type, const void *src, float *dst, int64_t n) {
    if (type == GGML_TYPE_F32) {
        std::memcpy(dst, src, n * sizeof(float));
        return;
    }
    auto traits = ggml_get_type_traits(type);
    if (!traits->to_float) throw FileError(fmt("cannot convert ggml type %s to float", ggml_type_name(type)));
    traits->to_float(src, dst, n);
}

#if ACE_X86_F16C
namespace {
bool has_f16c() {
    static const bool yes = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
    return yes;
}

__attribute__((target("avx,f16c"))) void fp32_to_fp16_f16c(const float *x, ggml_fp16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    ggml_fp32_to_fp16_row(x + i, y + i, n - i);
}

__attribute__((target("avx,f16c"))) void fp16_to_fp32_f16c(const ggml_fp16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    ggml_fp16_to_fp32_row(x + i, y + i, n - i);
}
}  // namespace
#endif

void fp32_to_fp16_row(const float *x, ggml_fp16_t *y, int64_t n) {
#if ACE_X86_F16C
    if (has_f16c()) return fp32_to_fp16_f16c(x, y, n);
#endif
    ggml_fp32_to_fp16_row(x, y, n);
}

void fp16_to_fp32_row(const ggml_fp16_t *x, float *y, int64_t n) {
#if ACE_X86_F16C
    if (has_f16c()) return fp16_to_fp32_f16c(x, y, n);
#endif
    ggml_fp16_to_fp32_row(x, y, n);
}

}  // namespace ace

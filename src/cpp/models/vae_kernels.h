// vae_kernels.h: the VAE's fused CPU kernels, as ggml custom ops (ggml_custom_op_t).  Only the
// CPU backend runs custom ops; on other devices the VAE uses stock ops instead (see vae.cpp).
// Each kernel is one pass over memory where a chain of stock element-wise ops would be five.
// Activations are [C, T] (ggml ne order), F32 unless said otherwise.
#pragma once

#include <vector>

#include "ggml.h"

namespace ace {

// A 1-D convolution's geometry (the custom ops' userdata).
struct ConvGeom {
    int kernel, stride, dilation, padding;
};

// The transforms of Winograd F(m, 7) (vae_kernels.cpp says how they are made).
struct Winograd {
    int m = 0, n = 0;
    std::vector<float> AT, G, BT;  // m x n, n x 7, n x n, row-major
};
// F(4, 7), computed once.
const Winograd &winograd();

// The Winograd kernels' userdata: the transforms and the convolution's dilation.
struct WinoGeom {
    const Winograd *w;
    int dilation;
};

// dst[c, t] = y + inv_beta[c] * sin^2(alpha[c] * y), y = x[c, t] (+ bias[c]).
// Args: x (F32), alpha, inv_beta, optional bias.  dst is F32 or F16.
void snake_kernel(ggml_tensor *dst, int ith, int nth, void *userdata);
// dst[k*C + c, t] = x[c, t*stride + k*dilation - padding], zero outside x (userdata: ConvGeom).
// x is F32 or F16, dst F32 or F16.
void im2col_kernel(ggml_tensor *dst, int ith, int nth, void *userdata);
// Transposed convolution's overlap-add: cols [K*C, T_in] (k-major) to dst [C, T_out] plus bias
// (args: cols, bias; userdata: ConvGeom).
void col2im_kernel(ggml_tensor *dst, int ith, int nth, void *userdata);
// dst = a + bias + skip (args: a, bias, skip): a residual unit's last convolution closing the unit.
void residual_kernel(ggml_tensor *dst, int ith, int nth, void *userdata);
// x [C, T] (F32 or F16) -> dst [C, n_tiles, n]: the Winograd input transform (userdata: WinoGeom).
void wino_in_kernel(ggml_tensor *dst, int ith, int nth, void *userdata);
// M [C, n_tiles, n] -> dst [C, T]: the output transform plus bias, then the snake that feeds the
// next convolution (args: M, bias, alpha, inv_beta; userdata: WinoGeom).
void wino_out_snake_kernel(ggml_tensor *dst, int ith, int nth, void *userdata);

}  // namespace ace

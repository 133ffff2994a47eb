// format.h: text for messages.
//
// Shapes: ggml stores dimensions innermost-first (ne[0] is the contiguous one), the reverse of
// PyTorch.  Everything in this project that takes a shape from a caller takes it in PyTorch
// order ("torch shape") and reverses it in one place: Graph::input, Weights, DeviceTensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ace {

// printf-style formatting for error messages.
std::string fmt(const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

std::string lower(std::string s);

// "[2048, 1024]" in PyTorch order.
std::string shape_str(const std::vector<int64_t> &torch_shape);

}  // namespace ace

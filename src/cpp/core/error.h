// error.h: the errors the core throws on purpose.  The bindings turn each kind into its class of
// the Python family (acestep_ggml.errors), and a bare Error into AcestepError; anything else that
// escapes the core is a bug.
#pragma once

#include <stdexcept>

namespace ace {

// The base of every error the core throws on purpose.  Thrown bare for a broken internal
// invariant: a bug of ours, not of the caller's input or file.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A model file is missing, corrupt, of the wrong kind, lacks/misshapes a tensor, or states
// hyperparameters its tensors contradict.
struct FileError : Error {
    using Error::Error;
};
// A caller passed something the models cannot take (shape, range, value).
struct InputError : Error {
    using Error::Error;
};
// A device cannot run or hold what was asked of it (or is not there): an op off the device under
// ACESTEP_GGML_STRICT_DEVICE, memory that cannot be allocated, a backend that cannot be loaded.
struct DeviceError : Error {
    using Error::Error;
};

}  // namespace ace

// env.h: the ACESTEP_GGML_* environment switches, each parsed here and nowhere else.
//
// A flag is on when its variable is set, non-empty and not "0".  Switches that tests flip per
// test (strict device, BF16, VAE ops, attention, memory limit) are read at every use; profiling,
// which times the whole process, once.
#pragma once

namespace ace::env {

// ACESTEP_GGML_VERBOSE: ggml's own log goes to stderr (read when the log handler is installed).
bool verbose();
// ACESTEP_GGML_STRICT_DEVICE: every graph node of every model must run on the model's device
// (input uploads and output downloads are the only copies allowed), else Runner::alloc throws
// DeviceError naming the op.
bool strict_device();
// ACESTEP_GGML_KEEP_BF16: BF16 matmul weights stay BF16 wherever the device multiplies them,
// also on a CPU that multiplies F16 faster (see Backend::weight_type).
bool keep_bf16();
// ACESTEP_GGML_PROFILE: 0 off; 1 times every node, totals per op at exit; 2 per op and shape.
int profile();
// ACESTEP_GGML_ATTN=flash|matmul: every attention node as ggml_flash_attn_ext, or as mul_mat +
// soft_max, whatever the device; unset: chosen per node by what the device runs (nn/attention.cpp).
// Any other value: InputError.
enum class Attn { Auto, Flash, Matmul };
Attn attention();

// ACESTEP_GGML_INT8: the Linears of the DiT, the text and condition encoders, the detokenizer and
// the LM's layers multiply in int8 on a CPU with AVX-512 VNNI (weights per channel at load,
// activations per row; nn/int8_matmul.h).  Read when a model loads; on another CPU or device, the
// model refuses to load (DeviceError).
bool int8();

// ACESTEP_GGML_MMAP=0: every weight is copied into memory of its own at load; unset or any other
// value: on the CPU, weights whose stored type is the type used at run time are served straight
// from a copy-on-write mapping of the model file (Weights::load).  Read at every load.
bool mmap_weights();

// ACESTEP_GGML_VAE_OPS=fused|stock: the VAE's fused CPU kernels or stock ggml ops regardless of
// the device (to compare the two on the CPU, and to prove that the strict-device check catches a
// CPU-only op on a GPU); unset: chosen by what the device runs.  Any other value: InputError.
// ACESTEP_GGML_MEMORY_LIMIT=N: at most N bytes (a K, M or G suffix: KiB, MiB, GiB) counted as
// free, on the device and on the host, when a request's memory need is checked before it runs
// (acestep_ggml/memory.py); -1 when unset.  Anything but a non-negative whole number: InputError.
long long memory_limit();

enum class VaeOps { Auto, Fused, Stock };
VaeOps vae_ops();

}  // namespace ace::env

// weights.cpp: declaring a model's tensors and loading them: served from the file's mapping, or
// read with a pool of pread workers.
#include "core/weights.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include <unistd.h>

#include "core/env.h"
#include "core/error.h"
#include "core/format.h"
#include "core/types.h"
#include "ggml-alloc.h"

namespace ace {

Weights::Weights(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend)
    : file_(std::move(file)), backend_(std::move(backend)) {
    // Metadata only: tensors live in the backend buffer allocated by load().
    ggml_init_params p = {/*mem_size=*/ggml_tensor_overhead() * (file_->tensors().size() + 1024),
                          /*mem_buffer=*/nullptr, /*no_alloc=*/true};
    ctx_ = ggml_init(p);
}

Weights::~Weights() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (mapped_) {
        for (const Entry &e : entries_)
            if (e.info && e.tensor->buffer == mapped_) file_->let_go(*e.info);
        ggml_backend_buffer_free(mapped_);
    }
    if (ctx_) ggml_free(ctx_);
}

ggml_tensor *Weights::new_tensor(const std::string &name, ggml_type type, const std::vector<int64_t> &s) {
    if (loaded_) throw Error("Weights: tensor declared after load()");
    if (s.empty() || s.size() > GGML_MAX_DIMS) throw Error("Weights: bad rank for " + name);
    int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < s.size(); i++) ne[i] = s[s.size() - 1 - i];
    ggml_tensor *t = ggml_new_tensor(ctx_, type, (int)s.size(), ne);
    ggml_set_name(t, name.size() < GGML_MAX_NAME ? name.c_str() : name.substr(name.size() - GGML_MAX_NAME + 1).c_str());
    return t;
}

ggml_tensor *Weights::get(const std::string &name, const std::vector<int64_t> &torch_shape, Store store) {
    const TensorInfo &info = file_->require(name);
    // Trailing/leading unit dimensions are not significant ([1, 6, H] == [6, H]).
    auto squeeze = [](std::vector<int64_t> s) {
        std::vector<int64_t> out;
        for (auto d : s)
            if (d != 1) out.push_back(d);
        return out;
    };
    if (squeeze(info.torch_shape()) != squeeze(torch_shape))
        throw FileError(fmt("%s: tensor '%s' has shape %s, expected %s", file_->path().c_str(), name.c_str(),
                            shape_str(info.torch_shape()).c_str(), shape_str(torch_shape).c_str()));
    if (!is_weight_type(info.type))
        throw FileError(fmt("%s: tensor '%s' has type %s, which is not a float or quantized type",
                            file_->path().c_str(), name.c_str(), ggml_type_name(info.type)));
    ggml_type type = store == Store::F32   ? GGML_TYPE_F32
                     : store == Store::F16 ? GGML_TYPE_F16
                                           : backend_->weight_type(info.type, keep_bf16_);
    ggml_tensor *t = new_tensor(name, type, torch_shape);
    entries_.push_back({name, t, &info, nullptr});
    return t;
}

ggml_tensor *Weights::derived(const std::string &name, ggml_type type, const std::vector<int64_t> &torch_shape,
                              std::function<std::vector<float>()> compute) {
    ggml_tensor *t = new_tensor(name, type, torch_shape);
    entries_.push_back({name, t, nullptr, std::move(compute)});
    return t;
}

// F16 conversion saturates at F16's largest finite value rather than overflowing to inf.
static void saturate_f16(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = std::min(65504.0f, std::max(-65504.0f, x[i]));
}

static void store_floats(ggml_tensor *t, std::vector<float> v, const std::string &what) {
    if ((int64_t)v.size() != ggml_nelements(t))
        throw FileError(fmt("%s: computed %zu values for a tensor of %lld", what.c_str(), v.size(),
                            (long long)ggml_nelements(t)));
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_set(t, v.data(), 0, v.size() * sizeof(float));
        return;
    }
    if (t->type == GGML_TYPE_F16) saturate_f16(v.data(), (int64_t)v.size());
    std::vector<uint8_t> buf(ggml_nbytes(t));
    ggml_quantize_chunk(t->type, v.data(), buf.data(), 0, ggml_nrows(t), t->ne[0], nullptr);
    ggml_backend_tensor_set(t, buf.data(), 0, buf.size());
}

// BF16 -> F16 (both 2 bytes), in slices through F32 that stay in L1.
static void bf16_to_f16(const uint16_t *src, uint16_t *dst, int64_t n) {
    constexpr int64_t kSlice = 4096;
    float tmp[kSlice];
    for (int64_t i = 0; i < n; i += kSlice) {
        int64_t m = std::min(kSlice, n - i);
        ggml_bf16_to_fp32_row(reinterpret_cast<const ggml_bf16_t *>(src + i), tmp, m);
        saturate_f16(tmp, m);
        fp32_to_fp16_row(tmp, reinterpret_cast<ggml_fp16_t *>(dst + i), m);
    }
}

// A tensor's bytes from the file into dst, BF16 converted to F16 on the way when asked.  The
// model load is bound by this copy (and the conversion, a few CPU-seconds for a 3 GB DiT), so
// n_threads workers each take a contiguous part with pread; a converting worker reads through
// an L2-sized staging buffer, so the data crosses memory once rather than being written,
// read back and written again.
static bool read_tensor(int fd, const TensorInfo &t, uint8_t *dst, bool to_f16, int n_threads) {
    constexpr size_t kChunk = 1 << 20;
    const size_t n = t.nbytes;
    const int workers = (int)std::max<size_t>(1, std::min<size_t>((size_t)std::max(1, n_threads), n / kChunk));
    std::vector<char> ok(workers, 1);
    auto work = [&](int w) {
        const size_t begin = n / workers * w & ~(size_t)1, end = w + 1 == workers ? n : n / workers * (w + 1) & ~(size_t)1;
        std::vector<uint8_t> staging(to_f16 ? kChunk : 0);
        for (size_t pos = begin; pos < end;) {
            const size_t m = std::min(kChunk, end - pos);
            uint8_t *into = to_f16 ? staging.data() : dst + pos;
            for (size_t got = 0; got < m;) {
                const ssize_t r = pread(fd, into + got, m - got, (off_t)(t.offset + pos + got));
                if (r <= 0) {
                    ok[w] = 0;
                    return;
                }
                got += (size_t)r;
            }
            if (to_f16)
                bf16_to_f16(reinterpret_cast<const uint16_t *>(into), reinterpret_cast<uint16_t *>(dst + pos),
                            (int64_t)(m / 2));
            pos += m;
        }
    };
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; w++) pool.emplace_back(work, w);
    work(0);
    for (auto &th : pool) th.join();
    return std::all_of(ok.begin(), ok.end(), [](char c) { return c != 0; });
}

// A tensor's bytes at the alignment the CPU buffers pad each tensor to.
static size_t padded_bytes(ggml_backend_t backend, const ggml_tensor *t) {
    const size_t align = ggml_backend_get_alignment(backend);
    return (ggml_nbytes(t) + align - 1) / align * align;
}

void Weights::load() {
    if (loaded_) return;
    // A file truncated since it was opened fails here, not as a SIGBUS in the first graph.
    file_->check_size();
    // The tensors stored as they are used, served from the file's mapping where the weights
    // live in host memory the CPU backend computes on.  Its pointers must meet the CPU's
    // tensor alignment (GGUF aligns tensor data to 32 bytes by default).
    if (backend_->is_cpu() && env::mmap_weights()) {
        const size_t align = ggml_backend_get_alignment(backend_->primary());
        for (auto &e : entries_) {
            if (e.tensor->data || !e.info || e.tensor->type != e.info->type || e.info->offset % align ||
                e.info->nbytes != ggml_nbytes(e.tensor))
                continue;
            uint8_t *base = file_->mapping();
            if (!base) break;
            if (!mapped_) {
                mapped_ = ggml_backend_cpu_buffer_from_ptr(base, file_->size());
                ggml_backend_buffer_set_usage(mapped_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
            }
            if (ggml_backend_tensor_alloc(mapped_, e.tensor, base + e.info->offset) != GGML_STATUS_SUCCESS)
                throw DeviceError(fmt("%s: could not map tensor '%s'", file_->path().c_str(), e.info->name.c_str()));
            file_->hold(*e.info);
            mapped_bytes_ += padded_bytes(backend_->primary(), e.tensor);
        }
    }
    size_t left = 0;  // bytes still to allocate
    for (ggml_tensor *t = ggml_get_first_tensor(ctx_); t; t = ggml_get_next_tensor(ctx_, t))
        if (!t->data) left += ggml_nbytes(t);
    if (left) buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, backend_->primary());
    if (!buffer_ && left) {
        throw DeviceError(fmt("%s: could not allocate %.1f MiB for the weights on %s", file_->path().c_str(),
                              left / 1048576.0, backend_->name().c_str()));
    }
    if (buffer_) ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    bool host = buffer_ && ggml_backend_buffer_is_host(buffer_);
    std::vector<uint8_t> staging;
    for (auto &e : entries_)
        if (!(mapped_ && e.tensor->buffer == mapped_)) fill(e, staging, host);
    loaded_ = true;
}

void Weights::fill(const Entry &e, std::vector<uint8_t> &staging, bool host) {
    if (!e.info) {
        store_floats(e.tensor, e.compute(), file_->path() + ": " + e.name);
        return;
    }
    const bool same = e.tensor->type == e.info->type;
    if (same || (e.info->type == GGML_TYPE_BF16 && e.tensor->type == GGML_TYPE_F16)) {
        // Straight into the weight buffer where it is host memory: no second copy.
        uint8_t *dst = static_cast<uint8_t *>(e.tensor->data);
        if (!host) {
            staging.resize(e.info->nbytes);
            dst = staging.data();
        }
        if (!read_tensor(file_->fd(), *e.info, dst, !same, backend_->n_threads()))
            throw FileError(fmt("%s: could not read tensor '%s'", file_->path().c_str(), e.info->name.c_str()));
        if (!host) ggml_backend_tensor_set(e.tensor, staging.data(), 0, staging.size());
    } else {
        store_floats(e.tensor, file_->read_f32(*e.info), file_->path() + ": " + e.info->name);
    }
}

const Weights::Entry &Weights::entry(const std::string &name) const {
    if (!loaded_) throw Error("Weights: tensor access before load()");
    for (const Entry &e : entries_)
        if (e.name == name) return e;
    throw FileError(fmt("%s: no loaded tensor '%s'", file_->path().c_str(), name.c_str()));
}

std::vector<float> Weights::read(const std::string &name) const {
    const ggml_tensor *t = entry(name).tensor;
    const int64_t n = ggml_nelements(t);
    std::vector<float> out((size_t)n);
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_get(t, out.data(), 0, out.size() * sizeof(float));
        return out;
    }
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    const ggml_type_traits *tr = ggml_get_type_traits(t->type);
    if (!tr->to_float) throw Error(fmt("Weights: no conversion to F32 for %s", ggml_type_name(t->type)));
    tr->to_float(raw.data(), out.data(), n);
    return out;
}

void Weights::write(const std::string &name, std::vector<float> values) {
    const Entry &e = entry(name);
    store_floats(e.tensor, std::move(values), file_->path() + ": " + name);
}

void Weights::evict(const std::string &name) {
    const Entry &e = entry(name);
    // Not while another model serves it from the same mapping: its pages may hold a merged adapter.
    if (mapped_ && e.info && e.tensor->buffer == mapped_ && file_->holders(*e.info) == 1) file_->drop_pages(*e.info);
}

void Weights::restore(const std::string &name) {
    std::vector<uint8_t> staging;
    const Entry &e = entry(name);
    // A mapped tensor's pages are the process's own copy once written (MAP_PRIVATE): reading the
    // file's bytes into them again restores them.
    fill(e, staging, ggml_backend_buffer_is_host(e.tensor->buffer));
}

size_t Weights::nbytes() const { return (buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0) + mapped_bytes_; }

}  // namespace ace

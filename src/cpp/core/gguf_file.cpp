// gguf_file.cpp: GGUF metadata, tensor index and tensor reads.
#include "core/gguf_file.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/env.h"
#include "core/error.h"
#include "core/format.h"
#include "core/log.h"
#include "core/types.h"

namespace ace {

std::vector<int64_t> TensorInfo::torch_shape() const {
    std::vector<int64_t> s;
    for (int i = n_dims - 1; i >= 0; i--) s.push_back(ne[i]);
    return s;
}

namespace {

// Whether s is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool valid_utf8(const char *s, size_t n) {
    const auto *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        const unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (len == 0 || i + len > n) return false;
        uint32_t cp = len == 1 ? c : c & (0x7F >> len);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

// s with bytes outside printable ASCII as \xNN, for messages about names that are not UTF-8.
std::string escaped(const std::string &s) {
    std::string out;
    for (unsigned char c : s.substr(0, 200))
        out += c >= 0x20 && c < 0x7F ? std::string(1, (char)c) : fmt("\\x%02x", c);
    return out;
}

// Every key, string value and tensor name is text to Python: a file whose bytes there are not
// UTF-8 is corrupt (a UnicodeDecodeError later otherwise).  Returns what is wrong, or "".
std::string non_utf8(const gguf_context *g) {
    auto ok = [](const char *s) { return valid_utf8(s, std::strlen(s)); };
    for (int64_t i = 0; i < gguf_get_n_kv(g); i++) {
        const char *key = gguf_get_key(g, i);
        if (!ok(key)) return fmt("metadata key %lld's name '%s' is not UTF-8", (long long)i, escaped(key).c_str());
        const gguf_type t = gguf_get_kv_type(g, i);
        if (t == GGUF_TYPE_STRING && !ok(gguf_get_val_str(g, i)))
            return fmt("metadata key '%s' holds a string that is not UTF-8", key);
        if (t == GGUF_TYPE_ARRAY && gguf_get_arr_type(g, i) == GGUF_TYPE_STRING)
            for (size_t k = 0; k < gguf_get_arr_n(g, i); k++)
                if (!ok(gguf_get_arr_str(g, i, k)))
                    return fmt("metadata key '%s' holds a string (entry %zu) that is not UTF-8", key, k);
    }
    for (int64_t i = 0; i < gguf_get_n_tensors(g); i++)
        if (!ok(gguf_get_tensor_name(g, i)))
            return fmt("tensor %lld's name '%s' is not UTF-8", (long long)i, escaped(gguf_get_tensor_name(g, i)).c_str());
    return "";
}

}  // namespace

GGUFFile::GGUFFile(const std::string &path) : path_(path) {
    fd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw FileError(fmt("%s: cannot open model file (%s)", path.c_str(), std::strerror(errno)));
    struct Guard {  // closes the descriptor when the constructor throws (the destructor does not run)
        int &fd;
        bool armed = true;
        ~Guard() {
            if (armed) close(fd);
        }
    } guard{fd_};
    char magic[4] = {0, 0, 0, 0};
    struct stat st {};
    const bool got = pread(fd_, magic, 4, 0) == 4;
    const long long file_size = fstat(fd_, &st) == 0 ? (long long)st.st_size : 0;
    if (!got || std::memcmp(magic, "GGUF", 4) != 0)
        throw FileError(fmt("%s: not a GGUF file (no GGUF magic at the start)", path.c_str()));
    if (!S_ISREG(st.st_mode)) throw FileError(fmt("%s: not a regular file", path.c_str()));

    ggml_context *meta = nullptr;
    gguf_init_params params = {/*no_alloc=*/true, /*ctx=*/&meta};
    last_ggml_error();
    gguf_ = gguf_init_from_file(path.c_str(), params);
    if (!gguf_) {
        std::string why = last_ggml_error();
        throw FileError(fmt("%s: corrupt or truncated GGUF file%s%s", path.c_str(), why.empty() ? "" : ": ",
                            why.c_str()));
    }
    if (const std::string bad = non_utf8(gguf_); !bad.empty()) {
        ggml_free(meta);
        gguf_free(gguf_);
        gguf_ = nullptr;
        throw FileError(fmt("%s: corrupt GGUF file: %s", path.c_str(), bad.c_str()));
    }
    size_t data_offset = gguf_get_data_offset(gguf_);
    int64_t n = gguf_get_n_tensors(gguf_);
    tensors_.reserve(n);
    for (int64_t i = 0; i < n; i++) {
        TensorInfo t;
        t.name = gguf_get_tensor_name(gguf_, i);
        t.type = gguf_get_tensor_type(gguf_, i);
        t.offset = data_offset + gguf_get_tensor_offset(gguf_, i);
        t.nbytes = gguf_get_tensor_size(gguf_, i);
        ggml_tensor *mt = ggml_get_tensor(meta, t.name.c_str());
        t.n_dims = ggml_n_dims(mt);
        for (int d = 0; d < GGML_MAX_DIMS; d++) t.ne[d] = mt->ne[d];
        if ((long long)(t.offset + t.nbytes) > file_size) {
            ggml_free(meta);
            gguf_free(gguf_);
            gguf_ = nullptr;
            throw FileError(fmt("%s: truncated GGUF file: tensor '%s' ends at byte %zu but the file has %lld bytes",
                                path.c_str(), t.name.c_str(), t.offset + t.nbytes, file_size));
        }
        extent_ = std::max(extent_, t.offset + t.nbytes);
        index_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }
    ggml_free(meta);
    size_ = (size_t)file_size;
    guard.armed = false;
}

GGUFFile::~GGUFFile() {
    if (map_) munmap(map_, size_);
    if (gguf_) gguf_free(gguf_);
    if (fd_ >= 0) close(fd_);
}

uint8_t *GGUFFile::mapping() {
    // models built from one file may load on several threads
    std::call_once(map_once_, [this] {
        void *p = size_ ? mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_, 0) : MAP_FAILED;
        if (p == MAP_FAILED) {
            if (env::verbose())
                std::fprintf(stderr, "acestep-ggml: %s: cannot map the file (%s); its weights are read into memory\n",
                             path_.c_str(), std::strerror(errno));
        } else {
            map_ = static_cast<uint8_t *>(p);
        }
    });
    return map_;
}

void GGUFFile::hold(const TensorInfo &t) {
    std::lock_guard<std::mutex> lock(holds_mu_);
    holds_[t.offset]++;
}

void GGUFFile::let_go(const TensorInfo &t) {
    std::lock_guard<std::mutex> lock(holds_mu_);
    auto it = holds_.find(t.offset);
    if (it == holds_.end() || --it->second > 0) return;
    holds_.erase(it);
    drop_pages(t);
}

int GGUFFile::holders(const TensorInfo &t) {
    std::lock_guard<std::mutex> lock(holds_mu_);
    auto it = holds_.find(t.offset);
    return it == holds_.end() ? 0 : it->second;
}

void GGUFFile::drop_pages(const TensorInfo &t) {
    if (!map_) return;
    // Only pages wholly inside this tensor: a page it shares with a neighbour stays.
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t begin = ((uintptr_t)(map_ + t.offset) + page - 1) / page * page;
    const uintptr_t end = (uintptr_t)(map_ + t.offset + t.nbytes) / page * page;
    if (end > begin) madvise(reinterpret_cast<void *>(begin), end - begin, MADV_DONTNEED);
}

void GGUFFile::check_size() const {
    struct stat st {};
    if (fstat(fd_, &st) != 0)
        throw FileError(fmt("%s: cannot stat the model file (%s)", path_.c_str(), std::strerror(errno)));
    if ((size_t)st.st_size < extent_)
        throw FileError(fmt("%s: the model file was truncated after it was opened: it has %lld bytes, its tensors "
                            "end at byte %zu",
                            path_.c_str(), (long long)st.st_size, extent_));
}

std::string GGUFFile::architecture() const { return get_str("general.architecture", ""); }

void GGUFFile::expect_architecture(const std::string &kind) const {
    std::string arch = architecture();
    if (arch != kind)
        throw FileError(fmt("%s: wrong kind of model file: general.architecture is '%s', expected '%s'",
                            path_.c_str(), arch.empty() ? "(missing)" : arch.c_str(), kind.c_str()));
}

bool GGUFFile::has_key(const std::string &key) const { return gguf_find_key(gguf_, key.c_str()) >= 0; }

int64_t GGUFFile::key_id(const std::string &key) const {
    int64_t id = gguf_find_key(gguf_, key.c_str());
    if (id < 0) throw FileError(fmt("%s: metadata key '%s' is missing", path_.c_str(), key.c_str()));
    return id;
}

static bool is_int_type(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64:
            return true;
        default:
            return false;
    }
}

static int64_t int_value(gguf_context *g, int64_t id, gguf_type t, size_t i, bool array) {
    const void *p = array ? gguf_get_arr_data(g, id) : gguf_get_val_data(g, id);
    switch (t) {
        case GGUF_TYPE_UINT8: return ((const uint8_t *)p)[i];
        case GGUF_TYPE_INT8: return ((const int8_t *)p)[i];
        case GGUF_TYPE_UINT16: return ((const uint16_t *)p)[i];
        case GGUF_TYPE_INT16: return ((const int16_t *)p)[i];
        case GGUF_TYPE_UINT32: return ((const uint32_t *)p)[i];
        case GGUF_TYPE_INT32: return ((const int32_t *)p)[i];
        case GGUF_TYPE_UINT64: return (int64_t)((const uint64_t *)p)[i];
        case GGUF_TYPE_INT64: return ((const int64_t *)p)[i];
        default: return 0;
    }
}

uint32_t GGUFFile::get_u32(const std::string &key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(gguf_, id);
    if (!is_int_type(t))
        throw FileError(fmt("%s: metadata key '%s' is a %s, expected an integer", path_.c_str(), key.c_str(),
                            gguf_type_name(t)));
    int64_t v = int_value(gguf_, id, t, 0, false);
    if (v < 0 || v > (int64_t)UINT32_MAX)
        throw FileError(fmt("%s: metadata key '%s' = %lld is out of range", path_.c_str(), key.c_str(), (long long)v));
    return (uint32_t)v;
}

float GGUFFile::get_f32(const std::string &key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(gguf_, id);
    if (t == GGUF_TYPE_FLOAT32) return gguf_get_val_f32(gguf_, id);
    if (t == GGUF_TYPE_FLOAT64) return (float)gguf_get_val_f64(gguf_, id);
    if (is_int_type(t)) return (float)int_value(gguf_, id, t, 0, false);
    throw FileError(fmt("%s: metadata key '%s' is a %s, expected a number", path_.c_str(), key.c_str(),
                        gguf_type_name(t)));
}

bool GGUFFile::get_bool(const std::string &key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(gguf_, id);
    if (t == GGUF_TYPE_BOOL) return gguf_get_val_bool(gguf_, id);
    if (is_int_type(t)) return int_value(gguf_, id, t, 0, false) != 0;
    throw FileError(fmt("%s: metadata key '%s' is a %s, expected a bool", path_.c_str(), key.c_str(),
                        gguf_type_name(t)));
}

std::string GGUFFile::get_str(const std::string &key) const {
    int64_t id = key_id(key);
    gguf_type t = gguf_get_kv_type(gguf_, id);
    if (t != GGUF_TYPE_STRING)
        throw FileError(fmt("%s: metadata key '%s' is a %s, expected a string", path_.c_str(), key.c_str(),
                            gguf_type_name(t)));
    return gguf_get_val_str(gguf_, id);
}

std::string GGUFFile::get_str(const std::string &key, const std::string &fallback) const {
    return has_key(key) ? get_str(key) : fallback;
}

std::vector<int64_t> GGUFFile::get_int_array(const std::string &key) const {
    int64_t id = key_id(key);
    gguf_type at = gguf_get_kv_type(gguf_, id) == GGUF_TYPE_ARRAY ? gguf_get_arr_type(gguf_, id) : GGUF_TYPE_COUNT;
    if (!is_int_type(at))
        throw FileError(fmt("%s: metadata key '%s' is not an integer array", path_.c_str(), key.c_str()));
    std::vector<int64_t> out(gguf_get_arr_n(gguf_, id));
    for (size_t i = 0; i < out.size(); i++) out[i] = int_value(gguf_, id, at, i, true);
    return out;
}

std::vector<std::string> GGUFFile::get_str_array(const std::string &key) const {
    int64_t id = key_id(key);
    if (gguf_get_kv_type(gguf_, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(gguf_, id) != GGUF_TYPE_STRING)
        throw FileError(fmt("%s: metadata key '%s' is not a string array", path_.c_str(), key.c_str()));
    std::vector<std::string> out(gguf_get_arr_n(gguf_, id));
    for (size_t i = 0; i < out.size(); i++) out[i] = gguf_get_arr_str(gguf_, id, i);
    return out;
}

const TensorInfo *GGUFFile::find(const std::string &name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo &GGUFFile::require(const std::string &name) const {
    const TensorInfo *t = find(name);
    if (!t) throw FileError(fmt("%s: tensor '%s' is missing", path_.c_str(), name.c_str()));
    return *t;
}

void GGUFFile::read(const TensorInfo &t, void *dst) const {
    size_t got = 0;
    while (got < t.nbytes) {
        const ssize_t r = pread(fd_, static_cast<uint8_t *>(dst) + got, t.nbytes - got, (off_t)(t.offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) throw FileError(fmt("%s: could not read tensor '%s'", path_.c_str(), t.name.c_str()));
        got += (size_t)r;
    }
}

std::vector<float> GGUFFile::read_f32(const TensorInfo &t) const {
    if (!is_weight_type(t.type))
        throw FileError(fmt("%s: tensor '%s' has type %s, which is not a float or quantized type", path_.c_str(),
                            t.name.c_str(), ggml_type_name(t.type)));
    std::vector<uint8_t> raw(t.nbytes);
    read(t, raw.data());
    std::vector<float> out(t.numel());
    to_float(t.type, raw.data(), out.data(), t.numel());
    return out;
}

}  // namespace ace

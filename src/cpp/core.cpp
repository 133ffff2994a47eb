// core.cpp: errors, backends, GGUF access, weight loading and graph execution.
#include "core.h"

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include "ggml-alloc.h"
#include "runtime.h"

namespace ace {

std::string fmt(const char *format, ...) {
    va_list ap, ap2;
    va_start(ap, format);
    va_copy(ap2, ap);
    int n = std::vsnprintf(nullptr, 0, format, ap);
    va_end(ap);
    std::string out(n > 0 ? n : 0, '\0');
    if (n > 0) std::vsnprintf(out.data(), out.size() + 1, format, ap2);
    va_end(ap2);
    return out;
}

std::string shape_str(const std::vector<int64_t> &s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

// ---------------------------------------------------------------------------
// Logging

namespace {
std::mutex g_log_mutex;
std::string g_last_error;
bool g_verbose = false;

void log_callback(ggml_log_level level, const char *text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
        std::lock_guard<std::mutex> lock(g_log_mutex);
        std::string line(text);
        while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
        if (!line.empty()) g_last_error = line;
    }
    if (g_verbose) std::fputs(text, stderr);
}
}  // namespace

void install_log_handler() {
    const char *v = std::getenv("ACESTEP_GGML_VERBOSE");
    g_verbose = v && *v && std::strcmp(v, "0") != 0;
    ggml_log_set(log_callback, nullptr);
}

std::string last_ggml_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string e = g_last_error;
    g_last_error.clear();
    return e;
}

// ---------------------------------------------------------------------------
// Backends

std::vector<DeviceInfo> list_devices() {
    std::vector<DeviceInfo> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        DeviceInfo d;
        d.name = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU: d.type = "cpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_GPU: d.type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: d.type = "igpu"; break;
            default: d.type = "accel"; break;
        }
        ggml_backend_dev_memory(dev, &d.memory_free, &d.memory_total);
        out.push_back(d);
    }
    return out;
}

std::string lower(std::string s) {
    for (auto &c : s) c = (char)std::tolower((unsigned char)c);
    return s;
}

// Device names look like "CPU", "CUDA0", "Vulkan1", "MTL0"; a spec like "cuda:1"
// or "vulkan" picks the device whose lower-cased name is prefix + index.
static ggml_backend_dev_t find_device(const std::string &spec_in) {
    std::string spec = lower(spec_in);
    size_t n = ggml_backend_dev_count();
    auto first_of_type = [&](bool gpu) -> ggml_backend_dev_t {
        for (size_t i = 0; i < n; i++) {
            auto dev = ggml_backend_dev_get(i);
            auto t = ggml_backend_dev_type(dev);
            bool is_gpu = t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU;
            if (is_gpu == gpu) return dev;
        }
        return nullptr;
    };
    if (spec == "cpu") return first_of_type(false);
    if (spec == "gpu") return first_of_type(true);
    if (spec == "auto") {
        auto d = first_of_type(true);
        return d ? d : first_of_type(false);
    }
    std::string prefix = spec, index = "0";
    auto colon = spec.find(':');
    if (colon != std::string::npos) {
        prefix = spec.substr(0, colon);
        index = spec.substr(colon + 1);
    }
    if (prefix == "metal") prefix = "mtl";
    for (size_t i = 0; i < n; i++) {
        auto dev = ggml_backend_dev_get(i);
        std::string name = lower(ggml_backend_dev_name(dev));
        if (name == spec || name == prefix + index) return dev;
    }
    return nullptr;
}

// The backend's registry entry point for its thread count, as a plugin exports it.
static void set_backend_threads(ggml_backend_t backend, int n_threads) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
    auto set = reg ? (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads")
                   : nullptr;
    if (set) set(backend, n_threads);
}

// Whether the registry of `backend` lists a CPU feature (as ggml_backend_get_features reports it).
static bool has_feature(ggml_backend_t backend, const char *feature) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(backend));
    auto get = (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
    for (auto *f = get ? get(reg) : nullptr; f && f->name; f++)
        if (std::strcmp(f->name, feature) == 0) return true;
    return false;
}

std::shared_ptr<Backend> Backend::get(const std::string &spec, int n_threads) {
    static std::mutex mu;
    static std::map<std::string, std::weak_ptr<Backend>> live;  // by device name
    std::lock_guard<std::mutex> lock(mu);
    ggml_backend_dev_t dev = find_device(spec);
    if (!dev) {
        std::string names;
        for (auto &d : list_devices()) names += (names.empty() ? "" : ", ") + d.name;
        throw InputError(fmt("no ggml device matches '%s' (this build has: %s); rebuild with "
                             "-DGGML_CUDA=ON, -DGGML_VULKAN=ON or -DGGML_METAL=ON for GPU backends",
                             spec.c_str(), names.c_str()));
    }
    const std::string name = ggml_backend_dev_name(dev);
    if (auto b = live[name].lock()) {
        b->set_n_threads(n_threads);
        return b;
    }
    std::shared_ptr<Backend> b(new Backend());
    b->name_ = name;
    b->primary_ = ggml_backend_dev_init(dev, nullptr);
    if (!b->primary_) throw InputError(fmt("could not initialise ggml device %s: %s", b->name_.c_str(),
                                           last_ggml_error().c_str()));
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
        b->cpu_ = b->primary_;
    } else {
        b->cpu_ = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    }
    if (b->cpu_) b->cpu_bf16_ = has_feature(b->cpu_, "AVX512_BF16");
    b->set_n_threads(n_threads > 0 ? n_threads : (int)std::max(1u, std::thread::hardware_concurrency()));
    live[name] = b;
    return b;
}

void Backend::set_n_threads(int n_threads) {
    if (n_threads <= 0) return;  // as it is
    std::lock_guard<std::mutex> lock(compute_mutex_);  // not while a graph of this backend runs
    n_threads_ = n_threads;
    set_backend_threads(primary_, n_threads_);
    if (cpu_ && cpu_ != primary_) set_backend_threads(cpu_, n_threads_);
}

Backend::~Backend() {
    if (cpu_ && cpu_ != primary_) ggml_backend_free(cpu_);
    if (primary_) ggml_backend_free(primary_);
}

bool Backend::supports(const ggml_tensor *node) const {
    return ggml_backend_supports_op(primary_, node);
}

int Backend::row_pieces(ggml_type type, int64_t cols, int64_t rows, bool w_first, ggml_type other) const {
    if (is_cpu()) return 1;
    ggml_init_params p = {ggml_tensor_overhead() * 3, nullptr, /*no_alloc=*/true};
    for (int n = 1; n <= 64 && n <= rows; n *= 2) {
        ggml_context *ctx = ggml_init(p);
        ggml_tensor *piece = ggml_new_tensor_2d(ctx, type, cols, (rows + n - 1) / n);
        ggml_tensor *x = ggml_new_tensor_2d(ctx, other, cols, 8);
        const bool ok = supports(piece) && supports(w_first ? ggml_mul_mat(ctx, piece, x) : ggml_mul_mat(ctx, x, piece));
        ggml_free(ctx);
        if (ok) return n;
    }
    return 1;
}

bool Backend::multiplies(ggml_type type) const {
    ggml_init_params p = {ggml_tensor_overhead() * 4, nullptr, /*no_alloc=*/true};
    ggml_context *ctx = ggml_init(p);
    const int64_t k = 256;  // a multiple of every block size
    ggml_tensor *w = ggml_new_tensor_2d(ctx, type, k, 64);
    ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, 8);
    bool ok = supports(ggml_mul_mat(ctx, w, x));
    ggml_free(ctx);
    return ok;
}

ggml_type Backend::weight_type(ggml_type file_type, bool keep_bf16) const {
    const char *env = std::getenv("ACESTEP_GGML_KEEP_BF16");
    keep_bf16 = keep_bf16 || (env && *env && std::string(env) != "0");
    if (file_type == GGML_TYPE_BF16 && is_cpu() && !cpu_bf16_ && !keep_bf16) return GGML_TYPE_F16;
    if (multiplies(file_type)) return file_type;
    return multiplies(GGML_TYPE_F16) ? GGML_TYPE_F16 : GGML_TYPE_F32;
}

bool strict_device() {
    const char *e = std::getenv("ACESTEP_GGML_STRICT_DEVICE");
    return e && *e && std::string(e) != "0";
}

// ---------------------------------------------------------------------------
// Config: a small recursive-descent JSON reader, enough for config.json files.

namespace {
struct JsonParser {
    const std::string &s;
    size_t i = 0;
    std::string error;

    void ws() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    }
    bool fail(const char *what) {
        if (error.empty()) error = fmt("%s at offset %zu", what, i);
        return false;
    }
    bool literal(const char *word) {
        size_t n = std::strlen(word);
        if (s.compare(i, n, word) != 0) return fail("unexpected token");
        i += n;
        return true;
    }
    bool string(std::string &out) {
        if (s[i] != '"') return fail("expected a string");
        i++;
        while (i < s.size() && s[i] != '"') {
            char c = s[i++];
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i >= s.size()) break;
            char e = s[i++];
            switch (e) {
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'u': {
                    if (i + 4 > s.size()) return fail("bad \\u escape");
                    unsigned cp = (unsigned)std::strtoul(s.substr(i, 4).c_str(), nullptr, 16);
                    i += 4;
                    // UTF-8 encode; config keys and values we read are ASCII, so surrogates stay as is.
                    if (cp < 0x80) out += (char)cp;
                    else if (cp < 0x800) { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }
                    else { out += (char)(0xE0 | (cp >> 12)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F)); }
                    break;
                }
                default: out += e; break;
            }
        }
        if (i >= s.size()) return fail("unterminated string");
        i++;
        return true;
    }
    bool value(Config::Value &v, std::map<std::string, Config::Value> *object_out = nullptr) {
        ws();
        if (i >= s.size()) return fail("unexpected end");
        char c = s[i];
        if (c == '{') {
            v.kind = Config::Value::Object;
            i++;
            ws();
            if (i < s.size() && s[i] == '}') { i++; return true; }
            for (;;) {
                ws();
                std::string key;
                if (!string(key)) return false;
                ws();
                if (i >= s.size() || s[i] != ':') return fail("expected ':'");
                i++;
                Config::Value child;
                if (!value(child)) return false;
                if (object_out) (*object_out)[key] = std::move(child);
                ws();
                if (i < s.size() && s[i] == ',') { i++; continue; }
                if (i < s.size() && s[i] == '}') { i++; return true; }
                return fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.kind = Config::Value::Array;
            i++;
            ws();
            if (i < s.size() && s[i] == ']') { i++; return true; }
            for (;;) {
                Config::Value child;
                if (!value(child)) return false;
                v.items.push_back(std::move(child));
                ws();
                if (i < s.size() && s[i] == ',') { i++; continue; }
                if (i < s.size() && s[i] == ']') { i++; return true; }
                return fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.kind = Config::Value::String;
            return string(v.text);
        }
        if (c == 't') { v.kind = Config::Value::Bool; v.number = 1; return literal("true"); }
        if (c == 'f') { v.kind = Config::Value::Bool; v.number = 0; return literal("false"); }
        if (c == 'n') { v.kind = Config::Value::Null; return literal("null"); }
        const char *start = s.c_str() + i;
        char *end = nullptr;
        v.number = std::strtod(start, &end);
        if (end == start) return fail("unexpected character");
        std::string tok(start, (const char *)end);
        v.is_integer = tok.find_first_of(".eE") == std::string::npos;
        v.kind = Config::Value::Number;
        i += end - start;
        return true;
    }
};
}  // namespace

Config::Config(const std::string &json, const std::string &where) : where_(where) {
    JsonParser p{json, 0, {}};
    Value root;
    p.ws();
    if (p.i >= json.size() || json[p.i] != '{') throw FileError(fmt("%s: config is not a JSON object", where.c_str()));
    if (!p.value(root, &values_)) throw FileError(fmt("%s: malformed config JSON: %s", where.c_str(), p.error.c_str()));
}

const Config::Value *Config::find(const std::string &key, Value::Kind kind) const {
    auto it = values_.find(key);
    if (it == values_.end() || it->second.kind == Value::Null) return nullptr;
    if (it->second.kind != kind)
        throw FileError(fmt("%s: config key '%s' has the wrong type", where_.c_str(), key.c_str()));
    return &it->second;
}

int64_t Config::get_int(const std::string &key, int64_t fallback) const {
    const Value *v = find(key, Value::Number);
    if (!v) return fallback;
    if (!v->is_integer) throw FileError(fmt("%s: config key '%s' must be an integer", where_.c_str(), key.c_str()));
    return (int64_t)v->number;
}

double Config::get_float(const std::string &key, double fallback) const {
    const Value *v = find(key, Value::Number);
    return v ? v->number : fallback;
}

bool Config::get_bool(const std::string &key, bool fallback) const {
    const Value *v = find(key, Value::Bool);
    return v ? v->number != 0 : fallback;
}

std::string Config::get_str(const std::string &key, const std::string &fallback) const {
    const Value *v = find(key, Value::String);
    return v ? v->text : fallback;
}

std::vector<int64_t> Config::get_int_list(const std::string &key, const std::vector<int64_t> &fallback) const {
    const Value *v = find(key, Value::Array);
    if (!v) return fallback;
    std::vector<int64_t> out;
    for (auto &item : v->items) {
        if (item.kind != Value::Number || !item.is_integer)
            throw FileError(fmt("%s: config key '%s' must be a list of integers", where_.c_str(), key.c_str()));
        out.push_back((int64_t)item.number);
    }
    return out;
}

std::vector<std::string> Config::get_str_list(const std::string &key, const std::vector<std::string> &fallback) const {
    const Value *v = find(key, Value::Array);
    if (!v) return fallback;
    std::vector<std::string> out;
    for (auto &item : v->items) {
        if (item.kind != Value::String)
            throw FileError(fmt("%s: config key '%s' must be a list of strings", where_.c_str(), key.c_str()));
        out.push_back(item.text);
    }
    return out;
}

// ---------------------------------------------------------------------------
// GGUF files

std::vector<int64_t> TensorInfo::torch_shape() const {
    std::vector<int64_t> s;
    for (int i = n_dims - 1; i >= 0; i--) s.push_back(ne[i]);
    return s;
}

GGUFFile::GGUFFile(const std::string &path) : path_(path) {
    FILE *f = std::fopen(path.c_str(), "rb");
    if (!f) throw FileError(fmt("%s: cannot open model file (%s)", path.c_str(), std::strerror(errno)));
    char magic[4] = {0, 0, 0, 0};
    size_t got = std::fread(magic, 1, 4, f);
    std::fseek(f, 0, SEEK_END);
    long long file_size = (long long)ftello(f);
    std::fclose(f);
    if (got != 4 || std::memcmp(magic, "GGUF", 4) != 0)
        throw FileError(fmt("%s: not a GGUF file (no GGUF magic at the start)", path.c_str()));

    ggml_context *meta = nullptr;
    gguf_init_params params = {/*no_alloc=*/true, /*ctx=*/&meta};
    last_ggml_error();
    gguf_ = gguf_init_from_file(path.c_str(), params);
    if (!gguf_) {
        std::string why = last_ggml_error();
        throw FileError(fmt("%s: corrupt or truncated GGUF file%s%s", path.c_str(), why.empty() ? "" : ": ",
                            why.c_str()));
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
        index_[t.name] = tensors_.size();
        tensors_.push_back(std::move(t));
    }
    ggml_free(meta);
}

GGUFFile::~GGUFFile() {
    if (gguf_) gguf_free(gguf_);
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

uint32_t GGUFFile::get_u32(const std::string &key, uint32_t fallback) const {
    return has_key(key) ? get_u32(key) : fallback;
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

float GGUFFile::get_f32(const std::string &key, float fallback) const {
    return has_key(key) ? get_f32(key) : fallback;
}

bool GGUFFile::get_bool(const std::string &key, bool fallback) const {
    if (!has_key(key)) return fallback;
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

Config GGUFFile::config() const {
    std::string js = get_str("acestep.config_json", "");
    if (js.empty()) return Config();
    return Config(js, path_ + ": acestep.config_json");
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
    FILE *f = std::fopen(path_.c_str(), "rb");
    if (!f) throw FileError(fmt("%s: cannot open model file (%s)", path_.c_str(), std::strerror(errno)));
    bool ok = fseeko(f, (off_t)t.offset, SEEK_SET) == 0 && std::fread(dst, 1, t.nbytes, f) == t.nbytes;
    std::fclose(f);
    if (!ok) throw FileError(fmt("%s: could not read tensor '%s'", path_.c_str(), t.name.c_str()));
}

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

// ---------------------------------------------------------------------------
// Weights

Weights::Weights(std::shared_ptr<GGUFFile> file, std::shared_ptr<Backend> backend)
    : file_(std::move(file)), backend_(std::move(backend)) {
    // Metadata only: tensors live in the backend buffer allocated by load().
    ggml_init_params p = {/*mem_size=*/ggml_tensor_overhead() * (file_->tensors().size() + 1024),
                          /*mem_buffer=*/nullptr, /*no_alloc=*/true};
    ctx_ = ggml_init(p);
}

Weights::~Weights() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
}

ggml_tensor *Weights::new_tensor(const std::string &name, ggml_type type, const std::vector<int64_t> &s) {
    if (buffer_) throw std::logic_error("Weights: tensor declared after load()");
    if (s.empty() || s.size() > GGML_MAX_DIMS) throw std::logic_error("Weights: bad rank for " + name);
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
    entries_.push_back({t, &info, nullptr});
    return t;
}

ggml_tensor *Weights::derived(const std::string &name, ggml_type type, const std::vector<int64_t> &torch_shape,
                              std::function<std::vector<float>()> compute) {
    ggml_tensor *t = new_tensor(name, type, torch_shape);
    entries_.push_back({t, nullptr, std::move(compute)});
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

void Weights::load() {
    if (buffer_) return;
    buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, backend_->primary());
    if (!buffer_ && !entries_.empty())
        throw FileError(fmt("%s: could not allocate %s for the weights on %s", file_->path().c_str(),
                            "a buffer", backend_->name().c_str()));
    if (buffer_) ggml_backend_buffer_set_usage(buffer_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    bool host = buffer_ && ggml_backend_buffer_is_host(buffer_);
    const int fd = open(file_->path().c_str(), O_RDONLY);
    if (fd < 0) throw FileError(fmt("%s: cannot open model file (%s)", file_->path().c_str(), std::strerror(errno)));
    struct Closer {
        int fd;
        ~Closer() { close(fd); }
    } closer{fd};
    std::vector<uint8_t> staging;
    for (auto &e : entries_) {
        if (!e.info) {
            store_floats(e.tensor, e.compute(), file_->path() + ": " + ggml_get_name(e.tensor));
            continue;
        }
        const bool same = e.tensor->type == e.info->type;
        if (same || (e.info->type == GGML_TYPE_BF16 && e.tensor->type == GGML_TYPE_F16)) {
            // Straight into the weight buffer where it is host memory: no second copy.
            uint8_t *dst = static_cast<uint8_t *>(e.tensor->data);
            if (!host) {
                staging.resize(e.info->nbytes);
                dst = staging.data();
            }
            if (!read_tensor(fd, *e.info, dst, !same, backend_->n_threads()))
                throw FileError(fmt("%s: could not read tensor '%s'", file_->path().c_str(), e.info->name.c_str()));
            if (!host) ggml_backend_tensor_set(e.tensor, staging.data(), 0, staging.size());
        } else {
            store_floats(e.tensor, file_->read_f32(*e.info), file_->path() + ": " + e.info->name);
        }
    }
}

size_t Weights::nbytes() const { return buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0; }

// ---------------------------------------------------------------------------
// Graphs

Graph::Graph(size_t max_nodes) {
    ggml_init_params p = {/*mem_size=*/ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false),
                          /*mem_buffer=*/nullptr, /*no_alloc=*/true};
    ctx_ = ggml_init(p);
    graph_ = ggml_new_graph_custom(ctx_, max_nodes, false);
}

Graph::~Graph() {
    if (ctx_) ggml_free(ctx_);
}

ggml_tensor *Graph::input(const char *name, ggml_type type, const std::vector<int64_t> &s) {
    int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < s.size(); i++) ne[i] = s[s.size() - 1 - i];
    ggml_tensor *t = ggml_new_tensor(ctx_, type, (int)s.size(), ne);
    ggml_set_name(t, name);
    ggml_set_input(t);
    return t;
}

void Graph::output(ggml_tensor *t) {
    ggml_set_output(t);
    ggml_build_forward_expand(graph_, t);
}

Runner::Runner(std::shared_ptr<Backend> backend, size_t max_nodes) : backend_(std::move(backend)) {
    std::vector<ggml_backend_t> backends = {backend_->primary()};
    if (!backend_->is_cpu() && backend_->cpu()) backends.push_back(backend_->cpu());
    sched_ = ggml_backend_sched_new(backends.data(), nullptr, (int)backends.size(), max_nodes, false, true);
    if (!sched_) throw std::runtime_error("could not create the ggml scheduler");
}

size_t Runner::compute_bytes() const { return ggml_backend_sched_get_buffer_size(sched_, backend_->primary()); }

// Ops that compute nothing: a view of an input on the CPU is part of its upload.
static bool is_view(const ggml_tensor *t) {
    switch (t->op) {
        case GGML_OP_NONE: case GGML_OP_VIEW: case GGML_OP_RESHAPE: case GGML_OP_PERMUTE: case GGML_OP_TRANSPOSE:
            return true;
        default:
            return false;
    }
}

// The tensor whose memory t is (a view's source), if that memory is the device's, not the host's.
static const ggml_tensor *held(const ggml_tensor *t) {
    const ggml_tensor *base = t->view_src ? t->view_src : t;
    return base->buffer && !ggml_backend_buffer_is_host(base->buffer) ? base : nullptr;
}

void Runner::alloc(Graph &g) {
    ggml_backend_sched_reset(sched_);
    if (!backend_->is_cpu()) {
        for (int i = 0; i < ggml_graph_n_nodes(g.graph()); i++) {
            ggml_tensor *node = ggml_graph_node(g.graph(), i);
            // ggml's scheduler aborts the process on a tensor in the device's memory that the
            // device cannot use (one too large to bind, say), or on an op it cannot run that
            // reads such a tensor (it cannot be moved to the CPU): named here first, as errors.
            const ggml_tensor *operand = nullptr;
            for (int k = 0; k < GGML_MAX_SRC; k++) {  // an optional operand may be absent before a later one
                const ggml_tensor *w = node->src[k] ? held(node->src[k]) : nullptr;
                if (w && !backend_->supports(w))
                    throw DeviceError(fmt("%s cannot use the tensor '%s' (%s, %.1f MiB) held in its memory: it may be "
                                          "larger than the device binds at once", backend_->name().c_str(),
                                          ggml_get_name(w), ggml_type_name(w->type), ggml_nbytes(w) / 1048576.0));
                if (w) operand = w;
            }
            if (is_view(node) || backend_->supports(node)) continue;
            if (strict_device())
                throw DeviceError(fmt("ACESTEP_GGML_STRICT_DEVICE: op %s (node '%s') runs on %s, not on the device %s, "
                                      "which does not support it", ggml_op_desc(node), ggml_get_name(node),
                                      backend_->cpu() ? ggml_backend_name(backend_->cpu()) : "no backend",
                                      backend_->name().c_str()));
            if (operand)
                throw DeviceError(fmt("op %s (node '%s') cannot run on %s, which holds its operand '%s' (%.1f MiB)",
                                      ggml_op_desc(node), ggml_get_name(node), backend_->name().c_str(),
                                      ggml_get_name(operand), ggml_nbytes(operand) / 1048576.0));
        }
    }
    if (!ggml_backend_sched_alloc_graph(sched_, g.graph()))
        throw std::runtime_error(fmt("could not allocate compute memory on %s: %s", backend_->name().c_str(),
                                     last_ggml_error().c_str()));
    if (backend_->is_cpu() || !strict_device()) return;
    for (int i = 0; i < ggml_graph_n_nodes(g.graph()); i++) {
        ggml_tensor *node = ggml_graph_node(g.graph(), i);
        ggml_backend_t on = ggml_backend_sched_get_tensor_backend(sched_, node);
        if (on != backend_->primary() && !is_view(node))
            throw DeviceError(fmt("ACESTEP_GGML_STRICT_DEVICE: op %s (node '%s') runs on %s, not on the device %s%s",
                                  ggml_op_desc(node), ggml_get_name(node), on ? ggml_backend_name(on) : "no backend",
                                  backend_->name().c_str(),
                                  backend_->supports(node) ? "" : ", which does not support it"));
    }
}

// ACESTEP_GGML_PROFILE=1: every node is computed on its own and timed; totals per op
// (matmuls per weight type; =2 also per shape) go to stderr at exit.  For finding where the time goes only:
// splitting the graph costs a little time per node.  Each runner's compute buffer is printed
// whenever it grows, for finding where the memory goes.
namespace {
struct Profile {
    std::mutex mu;
    std::map<std::string, std::pair<double, long>> ops;  // seconds, count
    double last = 0;
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
    static bool enabled() {
        static const bool on = [] {
            const char *e = std::getenv("ACESTEP_GGML_PROFILE");
            return e && *e && std::string(e) != "0";
        }();
        return on;
    }
    static bool detail() {
        static const bool on = std::string(std::getenv("ACESTEP_GGML_PROFILE")) == "2";
        return on;
    }
    static bool observe(ggml_tensor *t, bool ask, void *) {
        if (ask) return true;
        Profile &p = get();
        double t1 = now();
        std::string key = ggml_op_desc(t);
        if (t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID) {
            const ggml_tensor *a = t->src[0], *b = t->src[1];
            key += fmt("(%s)", ggml_type_name(a->type));
            if (detail())  // ACESTEP_GGML_PROFILE=2: shapes too, [K, M] x [K, N] (x batch)
                key += fmt(" %lldx%lld * %lldx%lld x%lld", (long long)a->ne[0], (long long)a->ne[1],
                           (long long)b->ne[0], (long long)b->ne[1], (long long)(b->ne[2] * b->ne[3]));
        } else if (t->op == GGML_OP_CUSTOM && detail()) {
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
    void buffer(const Runner *r, size_t bytes, const std::string &device, int n_nodes) {
        std::lock_guard<std::mutex> lock(mu);
        size_t &seen = buffers[r];
        if (bytes <= seen) return;
        seen = bytes;
        std::fprintf(stderr, "acestep-ggml profile: compute buffer %.1f MiB on %s (graph of %d nodes)\n",
                     bytes / 1048576.0, device.c_str(), n_nodes);
    }
    std::map<const Runner *, size_t> buffers;  // the largest compute buffer printed per live runner
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

Runner::~Runner() {
    if (sched_) ggml_backend_sched_free(sched_);
    if (Profile::enabled()) {
        std::lock_guard<std::mutex> lock(Profile::get().mu);
        Profile::get().buffers.erase(this);
    }
}

void Runner::compute(Graph &g) {
    if (Profile::enabled()) {
        ggml_backend_sched_set_eval_callback(sched_, Profile::observe, nullptr);
        Profile::get().last = Profile::now();
        Profile::get().buffer(this, compute_bytes(), backend_->name(), ggml_graph_n_nodes(g.graph()));
    }
    std::lock_guard<std::mutex> lock(backend_->compute_mutex());
    ggml_status st = ggml_backend_sched_graph_compute(sched_, g.graph());
    if (st != GGML_STATUS_SUCCESS)
        throw std::runtime_error(fmt("graph computation failed on %s (status %d): %s", backend_->name().c_str(),
                                     (int)st, last_ggml_error().c_str()));
}

static void check_count(const ggml_tensor *t, size_t n) {
    if ((int64_t)n != ggml_nelements(t))
        throw InputError(fmt("input '%s' needs %lld values, got %zu", ggml_get_name(t),
                             (long long)ggml_nelements(t), n));
}

void set_input(ggml_tensor *t, const float *data, size_t n) {
    check_count(t, n);
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_set(t, data, 0, n * sizeof(float));
    } else if (t->type == GGML_TYPE_F16) {
        std::vector<ggml_fp16_t> h(n);
        fp32_to_fp16_row(data, h.data(), (int64_t)n);
        ggml_backend_tensor_set(t, h.data(), 0, n * sizeof(ggml_fp16_t));
    } else {
        throw std::logic_error("set_input: unsupported tensor type");
    }
}

void set_input(ggml_tensor *t, const int32_t *data, size_t n) {
    check_count(t, n);
    if (t->type != GGML_TYPE_I32) throw std::logic_error("set_input: tensor is not I32");
    ggml_backend_tensor_set(t, data, 0, n * sizeof(int32_t));
}

std::vector<float> get_output(const ggml_tensor *t) {
    std::vector<float> out(ggml_nelements(t));
    if (t->type == GGML_TYPE_F32 && ggml_is_contiguous(t)) {
        ggml_backend_tensor_get(t, out.data(), 0, out.size() * sizeof(float));
        return out;
    }
    if (!ggml_is_contiguous(t)) throw std::logic_error("get_output: output tensor must be contiguous");
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    to_float(t->type, raw.data(), out.data(), (int64_t)out.size());
    return out;
}

}  // namespace ace

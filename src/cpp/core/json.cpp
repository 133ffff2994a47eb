// json.cpp: a small recursive-descent JSON reader, enough for config.json files.
#include "core/json.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/format.h"

namespace ace {

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

bool Config::has(const std::string &key) const {
    auto it = values_.find(key);
    return it != values_.end() && it->second.kind != Value::Null;
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

}  // namespace ace

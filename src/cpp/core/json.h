// json.h: a checkpoint's config.json (stored as `acestep.config_json`): the top-level keys of a
// JSON object, read as the hyperparameter reader needs them (core/hparams.h).  Missing keys take
// the caller's fallback; a present key of the wrong type is a FileError naming the key.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ace {

class Config {
  public:
    Config() = default;
    // Throws FileError (prefixed with `where`) on malformed JSON or a non-object.
    Config(const std::string &json, const std::string &where);

    // Present and not null.
    bool has(const std::string &key) const;
    int64_t get_int(const std::string &key, int64_t fallback) const;
    double get_float(const std::string &key, double fallback) const;
    bool get_bool(const std::string &key, bool fallback) const;
    std::string get_str(const std::string &key, const std::string &fallback) const;
    std::vector<int64_t> get_int_list(const std::string &key, const std::vector<int64_t> &fallback) const;
    std::vector<std::string> get_str_list(const std::string &key, const std::vector<std::string> &fallback) const;

    struct Value {
        enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
        double number = 0;
        bool is_integer = false;
        std::string text;           // String
        std::vector<Value> items;   // Array
    };

  private:
    const Value *find(const std::string &key, Value::Kind kind) const;
    std::string where_;
    std::map<std::string, Value> values_;
};

}  // namespace ace

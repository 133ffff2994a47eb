// log.cpp: ggml's log callback.
#include "core/log.h"

#include <cstdio>
#include <mutex>

#include "core/env.h"
#include "ggml.h"

namespace ace {

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
    g_verbose = env::verbose();
    ggml_log_set(log_callback, nullptr);
}

std::string last_ggml_error() {
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::string e = g_last_error;
    g_last_error.clear();
    return e;
}

}  // namespace ace

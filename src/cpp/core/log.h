// log.h: ggml's log routed through us.
#pragma once

#include <string>

namespace ace {

// Quiet unless ACESTEP_GGML_VERBOSE is set; the last error or warning line is kept so that
// exceptions can quote what ggml said.
void install_log_handler();
// The last error or warning line of ggml's log (then forgotten), or "".
std::string last_ggml_error();

}  // namespace ace

// Text that came from a guest (a build step's output, its environment) on its way into logs,
// JSON and the store: made valid UTF-8 first, so that nothing downstream throws on it.
#pragma once

#include <string>
#include <string_view>

namespace moat {

// `text` with every byte that is not part of a valid UTF-8 sequence (overlong forms, surrogates
// and code points past U+10FFFF included) replaced by U+FFFD.
std::string ValidUtf8(std::string_view text);

}  // namespace moat

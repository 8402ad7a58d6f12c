// How deep a JSON text nests, found before parsing it: a hostile text (a guest's, a VMM's)
// must not make the parser, or the destructor of what it built, recurse deeply.
#pragma once

#include <string_view>

namespace moat {

// Depth of nested arrays/objects in `text` (brackets inside strings do not count), or -1 as soon
// as it is over `limit`. Malformed text is left for the parser to reject.
int JsonDepth(std::string_view text, int limit);

}  // namespace moat

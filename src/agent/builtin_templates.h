// The built-in templates a host has beside `base` (src/common/builtin_templates.h): each one
// whose image is in the guest dir.
#pragma once

#include <string>
#include <vector>

#include "agent/sandbox.h"

namespace moat::agent {

// code-interpreter-v1 when GUEST_DIR/code-interpreter.ext4 exists: the base kernel, its own
// image and resources, and the interpreter server as its start command (run as root through
// sudo, logging to /var/log/moat-interpreter.log), ready once /health answers, which it does
// once the default Python kernel has started and imported the data stack.
std::vector<TemplateSpec> BuiltinTemplates(const TemplateSpec& base, const std::string& guest_dir);

}  // namespace moat::agent

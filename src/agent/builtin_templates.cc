#include "agent/builtin_templates.h"

#include "common/builtin_templates.h"
#include "common/fs.h"

namespace moat::agent {

std::vector<TemplateSpec> BuiltinTemplates(const TemplateSpec& base, const std::string& guest_dir) {
  std::vector<TemplateSpec> out;
  std::string image = guest_dir + "/" + kCodeInterpreterImage;
  if (PathExists(image)) {
    TemplateSpec t;
    t.name = kCodeInterpreterTemplate;
    t.kernel_path = base.kernel_path;
    t.rootfs_path = image;
    t.vcpus = kCodeInterpreterVcpus;
    t.memory_mib = kCodeInterpreterMemoryMib;
    t.start_cmd =
        "sudo -n /usr/bin/python3 -m moat_interpreter.server --log /var/log/moat-interpreter.log";
    t.ready_cmd =
        "curl -sf -m 5 -o /dev/null http://127.0.0.1:" + std::to_string(kCodeInterpreterPort) +
        "/health";
    t.ready_timeout = std::chrono::seconds(300);  // ~20 s under TCG
    // build-rootfs.sh replaces the image by a rename, never in place: the bake may link it.
    t.rootfs_immutable = true;
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace moat::agent

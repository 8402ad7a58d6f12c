// Which QEMU this host runs, and what moat may rely on because of it.
//
// moat needs QEMU 8.2 or later: a restored VM maps a memory file that many VMs share (a
// template's, a snapshot's), and only 8.2 can open it read-only under a private writable mapping
// (`memory-backend-file,share=off,readonly=on,rom=off`). Older QEMU opens it O_RDWR, so a VMM
// escape could write pages every sibling sees; moat refuses to run on it. 10.0 (Debian 13, and
// bookworm-backports on Debian 12) is the tested version; 9.1 adds what the migration code uses
// when present (docs/qemu10.md).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::vmm::qemu {

struct QemuVersion {
  int major = 0;
  int minor = 0;
  int micro = 0;
  std::string text;  // the first line of `--version`, for logs and manifests

  bool AtLeast(int maj, int min, int mic = 0) const {
    if (major != maj) return major > maj;
    if (minor != min) return minor > min;
    return micro >= mic;
  }
  std::string Number() const;  // "10.0.2"
};

// What a version allows; derived, never configured.
struct QemuFeatures {
  // 8.2: `readonly=on,rom=off` on a share=off memory-backend-file (open O_RDONLY, map private).
  bool readonly_private_memory = false;
  // 9.1: `fd:` on a regular file is deprecated (a warning per migration); `add-fd` plus
  // `file:/dev/fdset/N` replaces it. `migrate-incoming` takes `exit-on-error` (a failed load
  // leaves QEMU up with the error in query-migrate, instead of exiting).
  bool fdset_file_migration = false;
  bool incoming_exit_on_error = false;

  static QemuFeatures Of(const QemuVersion& v);
};

inline constexpr int kMinimumQemuMajor = 8;
inline constexpr int kMinimumQemuMinor = 2;

// Parses `qemu-system-x86_64 --version` ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-…)").
Result<QemuVersion> ParseQemuVersion(std::string_view version_output);

// The version in a QMP greeting ({"QMP": {"version": {"qemu": {"major", "minor", "micro"},
// "package"}}}); QEMU is not trusted, so every field is checked.
Result<QemuVersion> VersionFromQmpGreeting(const nlohmann::json& greeting);

// Runs `binary --version` (bounded), cached per binary for as long as its size, mtime and inode
// stay the same (a package upgrade changes them).
Result<QemuVersion> ProbeQemuVersion(const std::string& binary);

// FailedPrecondition naming the version found, the minimum and how to get it, if `v` is older.
Status CheckQemuSupported(const QemuVersion& v);

}  // namespace moat::vmm::qemu

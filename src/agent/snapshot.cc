#include "agent/snapshot.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::agent {

using nlohmann::json;

json ManifestToJson(const SnapshotManifest& m) {
  json j = {{"kind", m.kind},
            {"name", m.name},
            {"source", m.source},
            {"vcpus", m.vcpus},
            {"memoryMib", m.memory_mib},
            {"accel", m.accel},
            {"baseDisk", m.base_disk},
            {"createdUnixMs", m.created_unix_ms},
            {"sandboxId", m.sandbox_id},
            {"network", m.network},
            {"egress", m.egress},
            {"guestNetwork", m.guest_network},
            {"memoryFile", m.memory_file},
            {"qemuVersion", m.qemu_version}};
  if (m.filesystem_only) j["filesystemOnly"] = true;
  if (!m.memory_path.empty()) j["memoryPath"] = m.memory_path;
  if (m.identity) j["identity"] = IdentityToJson(*m.identity);
  return j;
}

std::string SerializeManifest(const SnapshotManifest& m) {
  return ManifestToJson(m).dump(2) + "\n";
}

Result<SnapshotManifest> ParseManifest(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("manifest: not a JSON object");
  return ManifestFromJson(j);
}

Result<SnapshotManifest> ManifestFromJson(const json& j) {
  if (!j.is_object()) return InvalidArgument("manifest: not a JSON object");
  SnapshotManifest m;
  auto str = [&](const char* key, std::string* out) -> Status {
    if (!j.contains(key) || !j[key].is_string()) {
      return InvalidArgument(std::string("manifest: \"") + key + "\" must be a string");
    }
    *out = j[key].get<std::string>();
    return Status::Ok();
  };
  auto num = [&](const char* key) -> Result<int64_t> {
    if (!j.contains(key) || !j[key].is_number_integer()) {
      return InvalidArgument(std::string("manifest: \"") + key + "\" must be an integer");
    }
    return j[key].get<int64_t>();
  };
  MOAT_RETURN_IF_ERROR(str("kind", &m.kind));
  MOAT_RETURN_IF_ERROR(str("name", &m.name));
  MOAT_RETURN_IF_ERROR(str("source", &m.source));
  MOAT_RETURN_IF_ERROR(str("accel", &m.accel));
  MOAT_RETURN_IF_ERROR(str("baseDisk", &m.base_disk));
  MOAT_RETURN_IF_ERROR(str("sandboxId", &m.sandbox_id));
  MOAT_ASSIGN_OR_RETURN(int64_t vcpus, num("vcpus"));
  MOAT_ASSIGN_OR_RETURN(int64_t mem, num("memoryMib"));
  MOAT_ASSIGN_OR_RETURN(m.created_unix_ms, num("createdUnixMs"));
  if (vcpus < 1 || vcpus > 64 || mem < 64) return InvalidArgument("manifest: bad resources");
  if (m.kind != "template" && m.kind != "paused" && m.kind != "named") {
    return InvalidArgument("manifest: unknown kind \"" + m.kind + "\"");
  }
  // Absent in manifests written before sandboxes had networking: no NIC.
  if (j.contains("network")) {
    if (!j["network"].is_boolean()) return InvalidArgument("manifest: \"network\" must be a bool");
    m.network = j["network"].get<bool>();
  }
  if (j.contains("egress")) {
    if (!j["egress"].is_null() && !j["egress"].is_object()) {
      return InvalidArgument("manifest: \"egress\" must be an object or null");
    }
    m.egress = j["egress"];
  }
  if (j.contains("guestNetwork")) {
    if (!j["guestNetwork"].is_null() && !j["guestNetwork"].is_object()) {
      return InvalidArgument("manifest: \"guestNetwork\" must be an object or null");
    }
    m.guest_network = j["guestNetwork"];
  }
  if (j.contains("memoryFile")) {
    if (!j["memoryFile"].is_boolean()) {
      return InvalidArgument("manifest: \"memoryFile\" must be a bool");
    }
    m.memory_file = j["memoryFile"].get<bool>();
  }
  if (j.contains("memoryPath")) {
    if (!j["memoryPath"].is_string() || j["memoryPath"].get<std::string>().empty() ||
        j["memoryPath"].get<std::string>()[0] != '/') {
      return InvalidArgument("manifest: \"memoryPath\" must be an absolute path");
    }
    m.memory_path = j["memoryPath"].get<std::string>();
  }
  if (j.contains("qemuVersion")) {
    if (!j["qemuVersion"].is_string() || j["qemuVersion"].get<std::string>().size() > 64) {
      return InvalidArgument("manifest: \"qemuVersion\" must be a short string");
    }
    m.qemu_version = j["qemuVersion"].get<std::string>();
  }
  if (j.contains("filesystemOnly")) {
    if (!j["filesystemOnly"].is_boolean()) {
      return InvalidArgument("manifest: \"filesystemOnly\" must be a bool");
    }
    m.filesystem_only = j["filesystemOnly"].get<bool>();
  }
  if (j.contains("identity")) {
    MOAT_ASSIGN_OR_RETURN(GuestIdentity id, IdentityFromJson(j["identity"], "manifest"));
    m.identity = std::move(id);
  }
  m.vcpus = static_cast<unsigned>(vcpus);
  m.memory_mib = static_cast<uint64_t>(mem);
  return m;
}

Result<SnapshotManifest> ReadManifest(const std::string& dir) {
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/manifest.json"));
  auto m = ParseManifest(text);
  if (!m.ok()) return m.status().Annotate(dir);
  return m;
}

Status WriteManifest(const std::string& dir, const SnapshotManifest& m) {
  return WriteFileAtomic(dir + "/manifest.json", SerializeManifest(m), 0644);
}

Status CopyFile(const std::string& from, const std::string& to) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError("open(" + from + ")");
  struct stat st {};
  if (::fstat(in.get(), &st) < 0) return ErrnoError("fstat(" + from + ")");
  UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!out) return ErrnoError("open(" + to + ")");
  // FICLONE shares every block (XFS, btrfs): O(1). It fails with EOPNOTSUPP/EXDEV elsewhere.
  if (::ioctl(out.get(), FICLONE, in.get()) == 0) return Status::Ok();
  // Copy only the data extents (SEEK_DATA/SEEK_HOLE) so that holes stay holes: a 2 GiB disk
  // image with 200 MB of content costs 200 MB, not 2 GiB.
  auto fail = [&](const std::string& what) {
    Status s = ErrnoError(what + "(" + from + ", " + to + ")");
    ::unlink(to.c_str());
    return s;
  };
  off_t pos = 0;
  while (pos < st.st_size) {
    off_t data = ::lseek(in.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole is left
      return fail("lseek(SEEK_DATA)");
    }
    off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
    if (hole < 0) return fail("lseek(SEEK_HOLE)");
    off_t src = data, dst = data;
    while (src < hole) {
      ssize_t n =
          ::copy_file_range(in.get(), &src, out.get(), &dst, static_cast<size_t>(hole - src), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return fail("copy_file_range");
      }
      if (n == 0) break;
    }
    pos = hole;
  }
  if (::ftruncate(out.get(), st.st_size) < 0) return fail("ftruncate");
  return Status::Ok();
}

}  // namespace moat::agent

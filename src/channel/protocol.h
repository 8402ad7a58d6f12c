// The guest protocol's operations as types (api/guest-channel.md, "Streams and operations"):
// every REQUEST the host sends is built from a struct here, and every MESSAGE, END and HELLO
// the guest sends is read back into one. This is the only place that touches the JSON of the
// channel on the host side.
//
// Everything the guest sends is hostile (DESIGN §1): a guest root can stop moat-guest and
// answer in its place. So the Decode functions never throw and never trust a type or a size:
// a field of the wrong type, a number out of range, a string or list too long, a missing
// required field is an error value naming the op and the field (GuestProtocolError), which
// fails that one request. The caller reports it to the GuestClient (ReportViolation), which
// counts violations per sandbox.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/status.h"

namespace moat::channel::proto {

// Bounds on what a decoded reply may hold. A frame's JSON is at most 64 KiB already; these keep
// one op's merged result (a listing spread over many MESSAGEs) bounded too.
inline constexpr size_t kMaxStringBytes = 64 * 1024;
inline constexpr size_t kMaxListEntries = 100000;  // `list`, `processes` (merged)
inline constexpr size_t kMaxArgv = 4096;
inline constexpr size_t kMaxMetadataEntries = 1024;  // a file's metadata (64 KiB in all)
// What one op's merged result may hold in decoded bytes (strings plus a per-item overhead):
// 100,000 entries of 64 KiB names each would otherwise be gigabytes.
inline constexpr size_t kMaxResultBytes = 32 * 1024 * 1024;

// The error for a reply that breaks the protocol: "guest sent an invalid reply to `op`: why".
Status GuestProtocolError(std::string_view op, std::string_view why);
// The guest's error code names (api/guest-channel.md) back to ErrorCode; kInternal if unknown.
ErrorCode ErrorCodeFromName(std::string_view name);

// ---- Requests (host → guest) ----

struct PtySize {
  int cols = 80;
  int rows = 24;
};

struct ExecOp {
  std::vector<std::string> argv;  // or
  std::string cmd;                // run by /bin/bash -l -c
  std::map<std::string, std::string> env;
  std::string cwd;
  std::string user;
  bool stdin_open = false;  // keep stdin open for DATA ch0
  std::optional<PtySize> pty;
  std::string tag;
  int64_t timeout_ms = 0;  // 0: none
};
struct AttachOp {
  std::optional<int64_t> pid;
  std::string tag;  // when no pid
};
struct ProcessesOp {};
struct SignalOp {
  int64_t pid = 0;
  int signal = 0;
};
struct StdinOp {
  int64_t pid = 0;
};
struct CloseStdinOp {
  int64_t pid = 0;
};
struct ResizeOp {
  int64_t pid = 0;
  PtySize size;
};
struct ReadFileOp {
  std::string path, user;
};
struct WriteFileOp {
  std::string path, user;
  std::optional<uint32_t> mode;
  std::map<std::string, std::string> metadata;  // the file's whole set (none: none)
};
struct StatOp {
  std::string path, user;
};
struct ListOp {
  std::string path, user;
  int depth = 1;
};
struct MkdirOp {
  std::string path, user;
};
struct MoveOp {
  std::string from, to, user;
};
struct RemoveOp {
  std::string path, user;
};
struct WatchOp {
  std::string path, user;
  bool recursive = false;
  bool include_entry = false;         // create/write/chmod events carry the entry
  bool allow_network_mounts = false;  // else a network filesystem is invalid_argument
};
struct IdentityOp {
  int64_t unix_ns = 0;
  std::string entropy_hex;
  std::map<std::string, std::string> env;  // empty: keep the guest's
  std::string user, workdir;               // empty: keep the guest's
};
struct NetworkOp {
  std::string interface = "eth0";
  std::string address;  // "169.254.0.21/30"
  std::string gateway;
  std::string mac;  // informational
  std::vector<std::string> dns;
};
struct HealthOp {};
struct MetricsOp {};

using Request = std::variant<ExecOp, AttachOp, ProcessesOp, SignalOp, StdinOp, CloseStdinOp,
                             ResizeOp, ReadFileOp, WriteFileOp, StatOp, ListOp, MkdirOp, MoveOp,
                             RemoveOp, WatchOp, IdentityOp, NetworkOp, HealthOp, MetricsOp>;

// The REQUEST payload's JSON. Never throws (strings are sent as given; the guest validates).
nlohmann::json Encode(const Request& request);
// The op's name ("exec", "stat", …), for errors and logs.
std::string_view OpName(const Request& request);

// ---- Replies (guest → host) ----

// The guest's HELLO.
struct Hello {
  uint64_t version = 0;
  uint64_t min_version = 1;
  std::string boot_id;
  int64_t uptime_ms = 0;
  bool pid1 = false;
  // What this moat-guest can do beyond the protocol version (a sandbox restored from an older
  // snapshot runs the moat-guest it had): kFeatureEnvd06 — file metadata, resolved symlink
  // targets, entries in watch events, uploads shown to watchers as writes in place.
  std::vector<std::string> features;
  bool Has(std::string_view feature) const;
};
inline constexpr std::string_view kFeatureEnvd06 = "envd-0.6";
Result<Hello> DecodeHello(std::string_view payload);

// END: the stream's result — Ok, or the guest's error (its code name mapped back; unknown codes
// are internal). An END that is not a JSON object is an error of the decode itself.
struct End {
  Status result;
};
Result<End> DecodeEnd(std::string_view payload);

// exec / attach stream MESSAGEs.
struct ExecStarted {
  int64_t pid = 0;
};
struct ExecExited {
  std::optional<int> exit_code;
  std::optional<int> signal;
  bool timed_out = false;
};
using ExecEvent = std::variant<ExecStarted, ExecExited>;
Result<ExecEvent> DecodeExecEvent(const nlohmann::json& message);

// `processes`: one MESSAGE's part of the list.
struct ProcessInfo {
  int64_t pid = 0;
  std::string tag;
  std::vector<std::string> argv;  // or
  std::string cmd;
  std::string cwd;
  bool pty = false;
};
Result<std::vector<ProcessInfo>> DecodeProcesses(const nlohmann::json& message);

// `stat`, `move`, `write_file`, and the items of `list`.
enum class FileType { kFile, kDir, kSymlink, kOther };
struct FileEntry {
  std::string name;
  std::string path;
  FileType type = FileType::kOther;
  uint64_t size = 0;
  uint32_t mode = 0;  // permission bits, & 07777
  std::string permissions, owner, group;
  int64_t mtime_ns = 0;
  std::optional<std::string> symlink_target;  // as written in the link
  // A symlink's destination as the user sees it; absent when it leads nowhere.
  struct Target {
    FileType type = FileType::kOther;
    uint32_t mode = 0;
    std::string path;  // absolute, every link resolved
  };
  std::optional<Target> target;
  std::map<std::string, std::string> metadata;  // user.e2b.* attributes
};
Result<FileEntry> DecodeFileEntry(const nlohmann::json& message, std::string_view op);
// `list`: one MESSAGE's part of the listing.
Result<std::vector<FileEntry>> DecodeEntries(const nlohmann::json& message);

// `read_file`'s first MESSAGE.
struct ReadFileHeader {
  uint64_t size = 0;
};
Result<ReadFileHeader> DecodeReadFileHeader(const nlohmann::json& message);

// `mkdir`.
Result<bool> DecodeMkdirCreated(const nlohmann::json& message);

// `watch` stream MESSAGEs.
struct WatchEvent {
  enum class Type { kStart, kCreate, kWrite, kRemove, kRename, kChmod };
  Type type = Type::kStart;
  std::string name;                // relative path; empty for kStart
  std::optional<FileEntry> entry;  // when asked for (WatchOp::include_entry) and still there
};
Result<WatchEvent> DecodeWatchEvent(const nlohmann::json& message);

// `health`.
struct Health {
  bool ok = false;
  int64_t uptime_ms = 0;
};
Result<Health> DecodeHealth(const nlohmann::json& message);

// `metrics` (bytes; cpu_used_pct 0..100 per the whole VM).
struct GuestMetrics {
  uint64_t cpu_count = 0;
  double cpu_used_pct = 0;
  uint64_t mem_total = 0, mem_used = 0, disk_total = 0, disk_used = 0;
};
Result<GuestMetrics> DecodeMetrics(const nlohmann::json& message);

}  // namespace moat::channel::proto

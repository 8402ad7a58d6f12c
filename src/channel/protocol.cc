#include "channel/protocol.h"

#include <limits>
#include <type_traits>

namespace moat::channel::proto {
namespace {

using nlohmann::json;

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

// A reader of one reply object: each accessor checks presence, type and range and remembers
// the first problem, so a decoder reads like a list of fields and reports one clear error.
// Nothing here throws: only is_*() checks, then get<>() of the checked type, and find().
class Fields {
 public:
  Fields(const json& j, std::string_view op) : j_(j), op_(op) {
    if (!j_.is_object()) Fail("not a JSON object");
  }

  bool ok() const { return why_.empty(); }
  Status status() const { return GuestProtocolError(op_, why_); }

  const json* Find(std::string_view key) const {
    if (!j_.is_object()) return nullptr;
    auto it = j_.find(std::string(key));
    return it == j_.end() ? nullptr : &*it;
  }
  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  std::optional<std::string> OptString(std::string_view key) {
    const json* v = Find(key);
    if (v == nullptr || v->is_null()) return std::nullopt;
    if (!v->is_string()) return Fail(key, "must be a string"), std::nullopt;
    const auto& s = v->get_ref<const std::string&>();
    if (s.size() > kMaxStringBytes) return Fail(key, "is too long"), std::nullopt;
    return s;
  }
  std::string String(std::string_view key) {
    if (!Has(key)) return Fail(key, "is missing"), std::string();
    return OptString(key).value_or("");
  }

  template <class Int>
  std::optional<Int> OptInt(std::string_view key, Int min = std::numeric_limits<Int>::min(),
                            Int max = std::numeric_limits<Int>::max()) {
    const json* v = Find(key);
    if (v == nullptr || v->is_null()) return std::nullopt;
    if (v->is_number_unsigned()) {
      // nlohmann reads every non-negative integer as unsigned: `min` still applies.
      uint64_t u = v->get<uint64_t>();
      bool below = min > 0 && u < static_cast<uint64_t>(min);
      if (below || u > static_cast<uint64_t>(max)) {
        return Fail(key, "is out of range"), std::nullopt;
      }
      return static_cast<Int>(u);
    }
    if (v->is_number_integer()) {
      int64_t i = v->get<int64_t>();
      if constexpr (std::is_unsigned_v<Int>) {
        if (i < 0) return Fail(key, "is out of range"), std::nullopt;
        if (static_cast<uint64_t>(i) > static_cast<uint64_t>(max))
          return Fail(key, "is out of range"), std::nullopt;
      } else {
        if (i < static_cast<int64_t>(min) || i > static_cast<int64_t>(max))
          return Fail(key, "is out of range"), std::nullopt;
      }
      return static_cast<Int>(i);
    }
    return Fail(key, "must be an integer"), std::nullopt;
  }
  template <class Int>
  Int Required(std::string_view key, Int min = std::numeric_limits<Int>::min(),
               Int max = std::numeric_limits<Int>::max()) {
    if (!Has(key)) return Fail(key, "is missing"), Int{};
    return OptInt<Int>(key, min, max).value_or(Int{});
  }

  std::optional<double> OptDouble(std::string_view key) {
    const json* v = Find(key);
    if (v == nullptr || v->is_null()) return std::nullopt;
    if (!v->is_number()) return Fail(key, "must be a number"), std::nullopt;
    return v->get<double>();
  }

  std::optional<bool> OptBool(std::string_view key) {
    const json* v = Find(key);
    if (v == nullptr || v->is_null()) return std::nullopt;
    if (!v->is_boolean()) return Fail(key, "must be a boolean"), std::nullopt;
    return v->get<bool>();
  }

  std::vector<std::string> StringList(std::string_view key, size_t max_items) {
    std::vector<std::string> out;
    const json* v = Find(key);
    if (v == nullptr || v->is_null()) return out;
    if (!v->is_array()) return Fail(key, "must be an array"), out;
    if (v->size() > max_items) return Fail(key, "has too many items"), out;
    for (const auto& item : *v) {
      if (!item.is_string()) return Fail(key, "must hold strings"), std::vector<std::string>();
      const auto& s = item.get_ref<const std::string&>();
      if (s.size() > kMaxStringBytes) return Fail(key, "holds a string too long"), out;
      out.push_back(s);
    }
    return out;
  }

  // The object of strings under `key` (optional), bounded in entries and bytes.
  std::map<std::string, std::string> StringMap(std::string_view key, size_t max_items) {
    std::map<std::string, std::string> out;
    const json* v = Find(key);
    if (v == nullptr || v->is_null()) return out;
    if (!v->is_object()) return Fail(key, "must be an object"), out;
    if (v->size() > max_items) return Fail(key, "has too many items"), out;
    size_t bytes = 0;
    for (const auto& [k, item] : v->items()) {
      if (!item.is_string()) return Fail(key, "must hold strings"), decltype(out)();
      const auto& s = item.get_ref<const std::string&>();
      bytes += k.size() + s.size();
      if (bytes > kMaxStringBytes) return Fail(key, "is too large"), decltype(out)();
      out[k] = s;
    }
    return out;
  }

  // The array under `key` (required), bounded in length.
  const json* Array(std::string_view key, size_t max_items) {
    const json* v = Find(key);
    if (v == nullptr) return Fail(key, "is missing"), nullptr;
    if (!v->is_array()) return Fail(key, "must be an array"), nullptr;
    if (v->size() > max_items) return Fail(key, "has too many items"), nullptr;
    return v;
  }

  void Fail(std::string_view why) {
    if (why_.empty()) why_ = std::string(why);
  }
  void Fail(std::string_view key, std::string_view why) {
    if (why_.empty()) why_ = "field \"" + std::string(key) + "\" " + std::string(why);
  }

 private:
  const json& j_;
  std::string_view op_;
  std::string why_;
};

json ParseObject(std::string_view payload) {
  json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return json();
  return j;
}

json EncodeImpl(const ExecOp& o) {
  json r = {{"op", "exec"}};
  if (!o.cmd.empty()) {
    r["cmd"] = o.cmd;
  } else {
    r["argv"] = o.argv;
  }
  if (!o.env.empty()) r["env"] = o.env;
  if (!o.cwd.empty()) r["cwd"] = o.cwd;
  if (!o.user.empty()) r["user"] = o.user;
  if (o.stdin_open) r["stdin"] = true;
  if (o.pty) r["pty"] = {{"cols", o.pty->cols}, {"rows", o.pty->rows}};
  if (!o.tag.empty()) r["tag"] = o.tag;
  if (o.timeout_ms > 0) r["timeout_ms"] = o.timeout_ms;
  return r;
}
json EncodeImpl(const AttachOp& o) {
  json r = {{"op", "attach"}};
  if (o.pid) {
    r["pid"] = *o.pid;
  } else {
    r["tag"] = o.tag;
  }
  return r;
}
json EncodeImpl(const ProcessesOp&) {
  return {{"op", "processes"}};
}
json EncodeImpl(const SignalOp& o) {
  return {{"op", "signal"}, {"pid", o.pid}, {"signal", o.signal}};
}
json EncodeImpl(const StdinOp& o) {
  return {{"op", "stdin"}, {"pid", o.pid}};
}
json EncodeImpl(const CloseStdinOp& o) {
  return {{"op", "close_stdin"}, {"pid", o.pid}};
}
json EncodeImpl(const ResizeOp& o) {
  return {{"op", "resize"}, {"pid", o.pid}, {"cols", o.size.cols}, {"rows", o.size.rows}};
}
json WithUser(json r, const std::string& user) {
  if (!user.empty()) r["user"] = user;
  return r;
}
json EncodeImpl(const ReadFileOp& o) {
  return WithUser({{"op", "read_file"}, {"path", o.path}}, o.user);
}
json EncodeImpl(const WriteFileOp& o) {
  json r = WithUser({{"op", "write_file"}, {"path", o.path}}, o.user);
  if (o.mode) r["mode"] = *o.mode;
  if (!o.metadata.empty()) r["metadata"] = o.metadata;
  return r;
}
json EncodeImpl(const StatOp& o) {
  return WithUser({{"op", "stat"}, {"path", o.path}}, o.user);
}
json EncodeImpl(const ListOp& o) {
  return WithUser({{"op", "list"}, {"path", o.path}, {"depth", o.depth}}, o.user);
}
json EncodeImpl(const MkdirOp& o) {
  return WithUser({{"op", "mkdir"}, {"path", o.path}}, o.user);
}
json EncodeImpl(const MoveOp& o) {
  return WithUser({{"op", "move"}, {"from", o.from}, {"to", o.to}}, o.user);
}
json EncodeImpl(const RemoveOp& o) {
  return WithUser({{"op", "remove"}, {"path", o.path}}, o.user);
}
json EncodeImpl(const WatchOp& o) {
  json r = WithUser({{"op", "watch"}, {"path", o.path}, {"recursive", o.recursive}}, o.user);
  if (o.include_entry) r["include_entry"] = true;
  if (o.allow_network_mounts) r["allow_network_mounts"] = true;
  return r;
}
json EncodeImpl(const IdentityOp& o) {
  json r = {{"op", "identity"}, {"unix_ns", o.unix_ns}, {"entropy", o.entropy_hex}};
  // Absent fields keep the guest's defaults: a resumed sandbox keeps the env it was given.
  if (!o.env.empty()) r["env"] = o.env;
  if (!o.user.empty()) r["user"] = o.user;
  if (!o.workdir.empty()) r["workdir"] = o.workdir;
  return r;
}
json EncodeImpl(const NetworkOp& o) {
  return {{"op", "network"},      {"interface", o.interface},
          {"address", o.address}, {"gateway", o.gateway},
          {"mac", o.mac},         {"dns", o.dns}};
}
json EncodeImpl(const HealthOp&) {
  return {{"op", "health"}};
}
json EncodeImpl(const MetricsOp&) {
  return {{"op", "metrics"}};
}

}  // namespace

Status GuestProtocolError(std::string_view op, std::string_view why) {
  return Internal("the sandbox's guest sent an invalid reply to `" + std::string(op) +
                  "`: " + std::string(why));
}

json Encode(const Request& request) {
  return std::visit([](const auto& op) { return EncodeImpl(op); }, request);
}

std::string_view OpName(const Request& request) {
  return std::visit(
      Overloaded{
          [](const ExecOp&) { return "exec"; }, [](const AttachOp&) { return "attach"; },
          [](const ProcessesOp&) { return "processes"; }, [](const SignalOp&) { return "signal"; },
          [](const StdinOp&) { return "stdin"; }, [](const CloseStdinOp&) { return "close_stdin"; },
          [](const ResizeOp&) { return "resize"; }, [](const ReadFileOp&) { return "read_file"; },
          [](const WriteFileOp&) { return "write_file"; }, [](const StatOp&) { return "stat"; },
          [](const ListOp&) { return "list"; }, [](const MkdirOp&) { return "mkdir"; },
          [](const MoveOp&) { return "move"; }, [](const RemoveOp&) { return "remove"; },
          [](const WatchOp&) { return "watch"; }, [](const IdentityOp&) { return "identity"; },
          [](const NetworkOp&) { return "network"; }, [](const HealthOp&) { return "health"; },
          [](const MetricsOp&) { return "metrics"; }},
      request);
}

ErrorCode ErrorCodeFromName(std::string_view name) {
  for (auto code :
       {ErrorCode::kInvalidArgument, ErrorCode::kNotFound, ErrorCode::kAlreadyExists,
        ErrorCode::kPermissionDenied, ErrorCode::kFailedPrecondition, ErrorCode::kResourceExhausted,
        ErrorCode::kDeadlineExceeded, ErrorCode::kUnavailable, ErrorCode::kCancelled,
        ErrorCode::kAborted, ErrorCode::kInternal}) {
    if (ErrorCodeName(code) == name) return code;
  }
  return ErrorCode::kInternal;
}

Result<Hello> DecodeHello(std::string_view payload) {
  json j = ParseObject(payload);
  Fields f(j, "HELLO");
  Hello h;
  h.version = f.Required<uint64_t>("version", 0, 1u << 30);
  h.min_version = f.OptInt<uint64_t>("min_version", 0, 1u << 30).value_or(1);
  if (auto b = f.OptString("boot_id")) h.boot_id = std::move(*b);
  h.uptime_ms = f.OptInt<int64_t>("uptime_ms", 0).value_or(0);
  h.pid1 = f.OptBool("pid1").value_or(false);
  h.features = f.StringList("features", 64);
  if (!f.ok()) return f.status();
  return h;
}

bool Hello::Has(std::string_view feature) const {
  for (const auto& f : features) {
    if (f == feature) return true;
  }
  return false;
}

Result<End> DecodeEnd(std::string_view payload) {
  json j = ParseObject(payload);
  Fields f(j, "END");
  if (!f.ok()) return f.status();
  const json* err = f.Find("error");
  if (err == nullptr || err->is_null()) return End{Status::Ok()};
  // A malformed error is still an error: the stream failed, the guest just said it badly.
  std::string code = "internal", message = "guest error";
  if (err->is_object()) {
    Fields e(*err, "END");
    if (auto c = e.OptString("code")) code = std::move(*c);
    if (auto m = e.OptString("message")) message = std::move(*m);
  }
  if (message.size() > 1024) message.resize(1024);
  Status s(ErrorCodeFromName(code), message);
  if (s.ok()) s = Internal(message);
  return End{std::move(s)};
}

Result<ExecEvent> DecodeExecEvent(const json& message) {
  Fields f(message, "exec");
  std::string type = f.String("type");
  if (!f.ok()) return f.status();
  if (type == "start") {
    ExecStarted s;
    s.pid = f.Required<int64_t>("pid", 1, std::numeric_limits<int32_t>::max());
    if (!f.ok()) return f.status();
    return ExecEvent(s);
  }
  if (type == "exit") {
    ExecExited e;
    e.exit_code = f.OptInt<int>("exit_code", -1, 255);
    e.signal = f.OptInt<int>("signal", 1, 128);
    e.timed_out = f.OptBool("timed_out").value_or(false);
    if (f.ok() && !e.exit_code && !e.signal) f.Fail("an exit needs \"exit_code\" or \"signal\"");
    if (!f.ok()) return f.status();
    return ExecEvent(e);
  }
  return GuestProtocolError("exec", "unknown event type \"" + type.substr(0, 64) + "\"");
}

Result<std::vector<ProcessInfo>> DecodeProcesses(const json& message) {
  Fields f(message, "processes");
  const json* list = f.Array("processes", kMaxListEntries);
  if (!f.ok()) return f.status();
  std::vector<ProcessInfo> out;
  out.reserve(list->size());
  for (const auto& item : *list) {
    Fields p(item, "processes");
    ProcessInfo info;
    info.pid = p.Required<int64_t>("pid", 1, std::numeric_limits<int32_t>::max());
    info.tag = p.OptString("tag").value_or("");
    info.argv = p.StringList("argv", kMaxArgv);
    info.cmd = p.OptString("cmd").value_or("");
    info.cwd = p.OptString("cwd").value_or("");
    info.pty = p.OptBool("pty").value_or(false);
    if (!p.ok()) return p.status();
    out.push_back(std::move(info));
  }
  return out;
}

FileType DecodeFileType(Fields& f) {
  std::string type = f.String("type");
  if (type == "file") return FileType::kFile;
  if (type == "dir") return FileType::kDir;
  if (type == "symlink") return FileType::kSymlink;
  if (type != "other") f.Fail("type", "is not one of file, dir, symlink, other");
  return FileType::kOther;
}

Result<FileEntry> DecodeFileEntry(const json& message, std::string_view op) {
  Fields f(message, op);
  FileEntry e;
  e.name = f.String("name");
  e.path = f.String("path");
  e.type = DecodeFileType(f);
  e.size = f.OptInt<uint64_t>("size").value_or(0);
  e.mode = f.OptInt<uint32_t>("mode", 0, 07777).value_or(0);
  e.permissions = f.OptString("permissions").value_or("");
  e.owner = f.OptString("owner").value_or("");
  e.group = f.OptString("group").value_or("");
  e.mtime_ns = f.OptInt<int64_t>("mtime_ns").value_or(0);
  e.symlink_target = f.OptString("symlink_target");
  if (const json* t = f.Find("target"); t != nullptr && !t->is_null()) {
    Fields tf(*t, op);
    FileEntry::Target target;
    target.type = DecodeFileType(tf);
    target.mode = tf.OptInt<uint32_t>("mode", 0, 07777).value_or(0);
    target.path = tf.String("path");
    if (!tf.ok()) return tf.status();
    e.target = std::move(target);
  }
  e.metadata = f.StringMap("metadata", kMaxMetadataEntries);
  if (!f.ok()) return f.status();
  return e;
}

Result<std::vector<FileEntry>> DecodeEntries(const json& message) {
  Fields f(message, "list");
  const json* list = f.Array("entries", kMaxListEntries);
  if (!f.ok()) return f.status();
  std::vector<FileEntry> out;
  out.reserve(list->size());
  for (const auto& item : *list) {
    MOAT_ASSIGN_OR_RETURN(FileEntry e, DecodeFileEntry(item, "list"));
    out.push_back(std::move(e));
  }
  return out;
}

Result<ReadFileHeader> DecodeReadFileHeader(const json& message) {
  Fields f(message, "read_file");
  ReadFileHeader h;
  h.size = f.Required<uint64_t>("size");
  if (!f.ok()) return f.status();
  return h;
}

Result<bool> DecodeMkdirCreated(const json& message) {
  Fields f(message, "mkdir");
  if (!f.Has("created")) f.Fail("created", "is missing");
  bool created = f.OptBool("created").value_or(false);
  if (!f.ok()) return f.status();
  return created;
}

Result<WatchEvent> DecodeWatchEvent(const json& message) {
  Fields f(message, "watch");
  std::string type = f.String("type");
  if (!f.ok()) return f.status();
  static const std::map<std::string, WatchEvent::Type, std::less<>> kTypes = {
      {"start", WatchEvent::Type::kStart},   {"create", WatchEvent::Type::kCreate},
      {"write", WatchEvent::Type::kWrite},   {"remove", WatchEvent::Type::kRemove},
      {"rename", WatchEvent::Type::kRename}, {"chmod", WatchEvent::Type::kChmod}};
  auto it = kTypes.find(type);
  if (it == kTypes.end()) {
    return GuestProtocolError("watch", "unknown event type \"" + type.substr(0, 64) + "\"");
  }
  WatchEvent ev;
  ev.type = it->second;
  if (ev.type != WatchEvent::Type::kStart) ev.name = f.String("name");
  if (!f.ok()) return f.status();
  if (const json* entry = f.Find("entry"); entry != nullptr && !entry->is_null()) {
    MOAT_ASSIGN_OR_RETURN(FileEntry e, DecodeFileEntry(*entry, "watch"));
    ev.entry = std::move(e);
  }
  return ev;
}

Result<Health> DecodeHealth(const json& message) {
  Fields f(message, "health");
  Health h;
  h.ok = f.OptBool("ok").value_or(false);
  h.uptime_ms = f.OptInt<int64_t>("uptime_ms", 0).value_or(0);
  if (!f.ok()) return f.status();
  return h;
}

Result<GuestMetrics> DecodeMetrics(const json& message) {
  Fields f(message, "metrics");
  GuestMetrics m;
  m.cpu_count = f.Required<uint64_t>("cpu_count", 0, 1u << 16);
  m.cpu_used_pct = f.OptDouble("cpu_used_pct").value_or(0);
  m.mem_total = f.Required<uint64_t>("mem_total");
  m.mem_used = f.Required<uint64_t>("mem_used");
  m.disk_total = f.Required<uint64_t>("disk_total");
  m.disk_used = f.Required<uint64_t>("disk_used");
  if (!f.ok()) return f.status();
  if (!(m.cpu_used_pct >= 0 && m.cpu_used_pct <= 100.0 * static_cast<double>(m.cpu_count + 1))) {
    return GuestProtocolError("metrics", "field \"cpu_used_pct\" is out of range");
  }
  return m;
}

}  // namespace moat::channel::proto

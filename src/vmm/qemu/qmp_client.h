// QmpClient: QEMU's machine protocol over a unix socket. A reader thread parses replies and
// events; Execute() matches replies to requests by "id". QEMU is untrusted: lines are bounded,
// JSON depth is bounded, unknown replies are dropped, and a lost connection fails every pending
// call with Unavailable instead of hanging it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "common/json_depth.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::vmm::qemu {

using Json = nlohmann::json;

struct QmpLimits {
  size_t max_line_bytes = 1 << 20;  // one reply or event
  int max_json_depth = 64;
  size_t max_buffered_events = 256;  // oldest dropped first
};

// The Status for a QMP error reply {"error":{"class":..,"desc":..}} to `command`:
// "qmp <command>: <class>: <desc>". CommandNotFound/DeviceNotFound map to NotFound,
// DeviceNotActive/KVMMissingCap to FailedPrecondition, GenericError (and anything else) to
// Aborted. Exposed for tests.
Status QmpErrorStatus(std::string_view command, const Json& error);
// Checked on every reply before parsing (common/json_depth.h).
using ::moat::JsonDepth;

// One line from QEMU, classified without any state (the reader thread applies it under its
// lock; the fuzz target feeds it arbitrary bytes). Never throws.
struct QmpLine {
  enum class Kind {
    kInvalid,  // too large, too deep, not JSON or not an object: dropped (`invalid_reason`)
    kEvent,    // has a string "event"
    kReply,    // has an unsigned "id"
    kOther,    // any other object (the greeting has "QMP")
  };
  Kind kind = Kind::kInvalid;
  const char* invalid_reason = "";
  Json message;     // the object, for every kind but kInvalid
  uint64_t id = 0;  // kReply
};
QmpLine ParseQmpLine(std::string_view line, const QmpLimits& limits);
// The string member `key` of a QMP value (a reply's "return", an event's "data"), or "" when
// `value` is not an object or the member is absent or not a string: QEMU's answers are read
// without trusting their types (nlohmann's value() would throw).
std::string QmpString(const Json& value, std::string_view key);
// The "status" inside an event's "data" ("" if any part is missing or of another type).
std::string QmpEventStatus(const Json& event);
// What a reply to `command` means: its "return", its "error" (QmpErrorStatus), or internal when
// it has neither.
Result<Json> QmpReplyResult(std::string_view command, Json reply);

class QmpClient {
 public:
  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Connects (retrying until the socket exists and accepts, within `timeout`), reads the
  // greeting and negotiates capabilities.
  static Result<std::unique_ptr<QmpClient>> Connect(const std::string& socket_path,
                                                    std::chrono::milliseconds timeout,
                                                    QmpLimits limits = {});
  // Takes an already connected socket (tests, or a socket the caller connected itself).
  static Result<std::unique_ptr<QmpClient>> FromSocket(UniqueFd socket,
                                                       std::chrono::milliseconds timeout,
                                                       QmpLimits limits = {});

  // Runs a command; returns its "return" value. Errors: the QMP error (QmpErrorStatus),
  // DeadlineExceeded after `timeout`, Unavailable when the connection is (or gets) lost.
  Result<Json> Execute(std::string_view command, const Json& arguments = Json::object(),
                       std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // getfd: hands `fd` to QEMU (SCM_RIGHTS) under `name`, for URIs such as "fd:<name>".
  Status GetFd(std::string_view name, int fd,
               std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // add-fd: hands `fd` to QEMU into a new fd set; returns the set's id, for paths such as
  // "/dev/fdset/<id>" (QEMU opens such a path by dup'ing a member whose access mode matches the
  // open's: an O_RDONLY fd for a load, O_WRONLY for a save). Undo with RemoveFdSet.
  Result<int64_t> AddFd(int fd, std::chrono::milliseconds timeout = std::chrono::seconds(5));
  Status RemoveFdSet(int64_t fdset_id);

  // The greeting QEMU sent ({"QMP": {"version": …, "capabilities": …}}).
  Json Greeting() const;

  // Events get sequence numbers. Take a cursor before the command that causes an event, then
  // wait for it: an event that arrived in between is not missed.
  uint64_t EventCursor() const;
  // The first event named `name` at or after `cursor` for which `match` (if given) holds;
  // sets *next_cursor past it. DeadlineExceeded / Unavailable otherwise.
  Result<Json> WaitEvent(std::string_view name, uint64_t cursor, std::chrono::milliseconds timeout,
                         const std::function<bool(const Json&)>& match = nullptr,
                         uint64_t* next_cursor = nullptr);

  bool connected() const;
  // Closes the socket and stops the reader; pending calls fail with Unavailable.
  void Close();

 private:
  struct Pending {
    std::optional<Result<Json>> reply;
    std::string command;
  };
  explicit QmpClient(UniqueFd socket, QmpLimits limits);
  Status Handshake(std::chrono::milliseconds timeout);
  Result<Json> Send(std::string_view command, const Json& arguments, int fd,
                    std::chrono::milliseconds timeout);
  void ReaderLoop();
  void HandleLine(std::string_view line);
  void FailAll(const Status& status);

  UniqueFd socket_;
  UniqueFd wake_read_;  // the reader polls it to notice Close()
  UniqueFd wake_write_;
  QmpLimits limits_;
  std::thread reader_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::mutex write_mu_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Pending> pending_;
  std::optional<Json> greeting_;
  std::deque<std::pair<uint64_t, Json>> events_;  // {sequence, event}
  uint64_t next_event_seq_ = 0;
  std::optional<Status> closed_;  // why the connection is gone
};

}  // namespace moat::vmm::qemu

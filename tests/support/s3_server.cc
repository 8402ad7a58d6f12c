#include "support/s3_server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <utility>
#include <vector>

#include "common/fs.h"
#include "common/unique_fd.h"

#ifndef MOAT_SOURCE_DIR_DEFAULT
#error "tests/support/CMakeLists.txt defines MOAT_SOURCE_DIR_DEFAULT"
#endif

namespace moat::test_support {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kListening = "S3rver listening on 127.0.0.1:";

void Note(const std::string& what) {
  std::fprintf(stderr, "[s3_server] %s\n", what.c_str());
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string SourceDir() {
  const char* env = std::getenv("MOAT_SOURCE_DIR");
  return env != nullptr && env[0] != '\0' ? env : MOAT_SOURCE_DIR_DEFAULT;
}

std::string Tail(const std::string& text, size_t max_bytes = 1500) {
  return text.size() > max_bytes ? "…" + text.substr(text.size() - max_bytes) : text;
}

// Runs `argv` in `cwd` with its output appended to `log`; the output's tail on failure.
Status RunLogged(const std::vector<std::string>& argv, const std::string& cwd,
                 const std::string& log) {
  UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!log_fd) return ErrnoError("open(" + log + ")");
  SpawnOptions o;
  o.argv = argv;
  o.cwd = cwd;
  o.fds = {{1, log_fd.get()}, {2, log_fd.get()}};
  MOAT_ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn(o));
  auto status = child.Wait(std::chrono::minutes(5));
  if (!status.ok()) return status.status().Annotate(argv[0] + " " + argv[1]);
  if (*status != 0) {
    auto text = ReadFile(log);
    return Internal(argv[0] + " " + argv[1] + " " + DescribeWaitStatus(*status) + ":\n" +
                    Tail(text.ok() ? *text : std::string()));
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> EnsureS3rverInstalled() {
  const std::string dir = SourceDir() + "/tests/support/s3rver";
  const std::string js = dir + "/node_modules/s3rver/bin/s3rver.js";
  if (::access(js.c_str(), R_OK) == 0) return js;
  if (::access((dir + "/package-lock.json").c_str(), R_OK) != 0) {
    return FailedPrecondition("s3_server: no " + dir + "/package-lock.json");
  }
  // Beside what it guards (git-ignored), not in /tmp where it would outlive every test.
  const std::string lock_path = dir + "/.install.lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666));
  if (!lock) return ErrnoError("open(" + lock_path + ")");
  if (::flock(lock.get(), LOCK_EX) < 0) return ErrnoError("flock(" + lock_path + ")");
  // Another test may have installed it while this one waited.
  if (::access(js.c_str(), R_OK) == 0) return js;
  auto started = Clock::now();
  std::string log = "/tmp/moat-s3rver-npm-" + std::to_string(::getpid()) + ".log";
  Status s = RunLogged({"npm", "ci", "--offline", "--no-audit", "--no-fund"}, dir, log);
  if (!s.ok()) {
    Note("npm ci --offline failed; trying the registry");
    s = RunLogged({"npm", "ci", "--no-audit", "--no-fund"}, dir, log);
  }
  ::unlink(log.c_str());
  if (!s.ok()) {
    return FailedPrecondition("s3_server: installing s3rver in " + dir +
                              " (needs node and npm: scripts/setup-deps.sh): " + s.message());
  }
  if (::access(js.c_str(), R_OK) != 0) {
    return FailedPrecondition("s3_server: npm ci left no " + js);
  }
  Note("installed s3rver in " + dir + " (" + std::to_string(SecondsSince(started)).substr(0, 4) +
       " s)");
  return js;
}

S3Server::S3Server(std::string bucket) : bucket_(std::move(bucket)) {}

S3Server::~S3Server() {
  Kill();
  if (!dir_.empty()) {
    Status s = RemoveTree(dir_);
    if (!s.ok()) Note("removing " + dir_ + ": " + s.ToString());
  }
}

std::string S3Server::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(port_);
}

bool S3Server::running() {
  return server_.valid() && !server_.Exited();
}

storage::S3Config S3Server::Config(const std::string& prefix) const {
  storage::S3Config c;
  c.location.bucket = bucket_;
  c.location.prefix = prefix;
  c.endpoint = endpoint();
  c.credentials.access_key_id = "S3RVER";
  c.credentials.secret_access_key = "S3RVER";
  c.connect_timeout = std::chrono::milliseconds(2000);
  c.request_timeout = std::chrono::milliseconds(10000);
  c.max_attempts = 3;
  c.backoff_base = std::chrono::milliseconds(50);
  return c;
}

void S3Server::Kill() {
  if (running()) {
    // The server leads its own process group (setsid at spawn): whatever node started goes too.
    // The pid is still ours (not reaped), so the group cannot be someone else's.
    ::kill(-server_.pid(), SIGKILL);
  }
  server_.Kill();
}

Status S3Server::Start() {
  if (running()) {
    return FailedPrecondition("s3_server: already running on port " + std::to_string(port_));
  }
  if (dir_.empty()) {
    MOAT_ASSIGN_OR_RETURN(dir_, MakeTempDir("/tmp", "moat-s3-"));
    MOAT_RETURN_IF_ERROR(MakeDirs(dir_ + "/data"));
  }
  MOAT_RETURN_IF_ERROR(StartOnce());
  if (!bucket_made_) {
    MOAT_ASSIGN_OR_RETURN(auto store, storage::S3ObjectStore::Make(Config()));
    MOAT_RETURN_IF_ERROR(store->CreateBucket().Annotate("s3_server"));
    bucket_made_ = true;
  }
  return Status::Ok();
}

Status S3Server::StartOnce() {
  MOAT_ASSIGN_OR_RETURN(std::string js, EnsureS3rverInstalled());
  auto started = Clock::now();
  std::string log = dir_ + "/server.log";
  UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log_fd) return ErrnoError("open(" + log + ")");
  off_t log_start = ::lseek(log_fd.get(), 0, SEEK_END);

  // Port 0 the first time: s3rver binds a free port and prints it; a restart reuses it.
  SpawnOptions o;
  // --openssl-legacy-provider: s3rver makes its ListObjectsV2 continuation tokens with DES,
  // which OpenSSL 3 only offers from its legacy provider (without it, a listing of more than
  // one page answers 500).
  o.argv = {"node",
            "--openssl-legacy-provider",
            js,
            "--directory",
            dir_ + "/data",
            "--address",
            "127.0.0.1",
            "--port",
            std::to_string(port_),
            "--silent",
            "--no-vhost-buckets"};
  o.fds = {{1, log_fd.get()}, {2, log_fd.get()}};
  o.cwd = dir_;
  o.parent_death_signal = SIGKILL;
  auto spawned = ChildProcess::Spawn(o);
  if (!spawned.ok()) {
    return spawned.status().Annotate("s3_server: starting node (is nodejs installed?)");
  }
  server_ = std::move(*spawned);

  auto deadline = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    std::string this_run;
    if (auto text = ReadFile(log); text.ok() && static_cast<size_t>(log_start) <= text->size()) {
      this_run = text->substr(static_cast<size_t>(log_start));
    }
    size_t at = this_run.find(kListening);
    if (at != std::string::npos) {
      size_t digits = at + std::string(kListening).size();
      size_t end = this_run.find_first_not_of("0123456789", digits);
      if (end != std::string::npos) {
        port_ = std::atoi(this_run.substr(digits, end - digits).c_str());
        break;
      }
    }
    if (server_.Exited()) {
      std::string how = server_.exit_status() ? DescribeWaitStatus(*server_.exit_status())
                                              : std::string("exited");
      server_ = ChildProcess();
      return Internal("s3_server: s3rver " + how + " at start:\n" + Tail(this_run));
    }
    if (Clock::now() > deadline) {
      Kill();
      return DeadlineExceeded("s3_server: s3rver not listening after 30 s:\n" + Tail(this_run));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Note("started on " + endpoint() + " (pid " + std::to_string(server_.pid()) + ", " +
       std::to_string(SecondsSince(started)).substr(0, 4) + " s), data " + dir_ + "/data");
  return Status::Ok();
}

}  // namespace moat::test_support

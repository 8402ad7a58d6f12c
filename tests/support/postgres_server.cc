#include "support/postgres_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <utility>
#include <vector>

#include "api/store/pg_connection.h"
#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::test_support {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultBin = "/usr/lib/postgresql/15/bin";

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void Note(const std::string& what) {
  std::fprintf(stderr, "[postgres_server] %s\n", what.c_str());
}

// A loopback port nobody listens on right now (bound to port 0, then released). Another process
// may take it before the server does; Start tries another one then.
Result<int> FreeLoopbackPort() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return ErrnoError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  // sockaddr_in is the IPv4 form of sockaddr: the cast is how the socket API takes it.
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    return ErrnoError("bind(127.0.0.1:0)");
  }
  socklen_t len = sizeof addr;
  if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len) < 0) {
    return ErrnoError("getsockname");
  }
  return static_cast<int>(ntohs(addr.sin_port));
}

// The last lines of a log, for an error message.
std::string Tail(const std::string& path, size_t max_bytes = 1500) {
  auto text = ReadFile(path);
  if (!text.ok()) return "(no " + path + ")";
  std::string s = *text;
  if (s.size() > max_bytes) s = "…" + s.substr(s.size() - max_bytes);
  return s;
}

}  // namespace

PostgresServer::PostgresServer(std::string database) : database_(std::move(database)) {}

PostgresServer::~PostgresServer() {
  if (running()) {
    Status s = Stop();
    if (!s.ok()) Note("stop: " + s.ToString());
  }
  postmaster_.Kill();  // no-op unless Stop failed
  if (!dir_.empty()) {
    Status s = RemoveTree(dir_);
    if (!s.ok()) Note("removing " + dir_ + ": " + s.ToString());
  }
}

std::string PostgresServer::conninfo() const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" + database_;
}

bool PostgresServer::running() {
  return postmaster_.valid() && !postmaster_.Exited();
}

// Finds the binaries, makes the temp dir and runs initdb (first Start only).
Status PostgresServer::Prepare() {
  const char* env_bin = std::getenv("MOAT_PG_BIN");
  bin_ = env_bin != nullptr ? env_bin : kDefaultBin;
  for (const char* tool : {"initdb", "postgres"}) {
    if (::access((bin_ + "/" + tool).c_str(), X_OK) != 0) {
      return FailedPrecondition("postgres_server: PostgreSQL 15 is not installed (no " + bin_ +
                                "/" + tool +
                                "); install postgresql-15 (make deps: scripts/setup-deps.sh)");
    }
  }
  if (::geteuid() == 0) {
    // initdb and postgres refuse to run as root.
    passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) {
      return FailedPrecondition(
          "postgres_server: running as root and there is no `postgres` user to run PostgreSQL "
          "as (the postgresql-15 package makes it)");
    }
    uid_ = pw->pw_uid;
    gid_ = pw->pw_gid;
    drop_privileges_ = true;
  } else {
    uid_ = ::geteuid();
    gid_ = ::getegid();
  }
  MOAT_ASSIGN_OR_RETURN(dir_, MakeTempDir("/tmp", "moat-pg-"));
  if (drop_privileges_ && ::chown(dir_.c_str(), uid_, gid_) < 0) {
    return ErrnoError("chown(" + dir_ + ", postgres)");
  }

  auto started = Clock::now();
  std::string log = dir_ + "/initdb.log";
  UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log_fd) return ErrnoError("open(" + log + ")");
  SpawnOptions o;
  o.argv = {bin_ + "/initdb", "--no-sync",  "-A", "trust",       "-U", "postgres", "-E",
            "UTF8",           "--locale=C", "-D", dir_ + "/data"};
  o.env = std::vector<std::string>{"PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=" + dir_};
  o.fds = {{1, log_fd.get()}, {2, log_fd.get()}};
  o.cwd = dir_;
  if (drop_privileges_) {
    uid_t uid = uid_;
    gid_t gid = gid_;
    // Runs in the child between fork and exec: plain system calls only. Changing the user
    // clears the parent-death signal, so it is set again after.
    o.pre_exec = [uid, gid]() -> int {
      if (::setgroups(1, &gid) < 0 || ::setgid(gid) < 0 || ::setuid(uid) < 0) return errno;
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return errno;
      return 0;
    };
  }
  MOAT_ASSIGN_OR_RETURN(ChildProcess initdb, ChildProcess::Spawn(o));
  auto status = initdb.Wait(std::chrono::seconds(60));
  if (!status.ok()) return status.status().Annotate("postgres_server: initdb");
  if (*status != 0) {
    return Internal("postgres_server: initdb " + DescribeWaitStatus(*status) + ":\n" + Tail(log));
  }
  Note("initdb " + dir_ + "/data (" + std::to_string(SecondsSince(started)).substr(0, 4) + " s)");
  initialized_ = true;
  return Status::Ok();
}

Status PostgresServer::Start() {
  if (running())
    return FailedPrecondition("postgres_server: already running on port " + std::to_string(port_));
  if (!initialized_) {
    if (!dir_.empty()) return FailedPrecondition("postgres_server: an earlier Start failed");
    MOAT_RETURN_IF_ERROR(Prepare());
  }
  // The first start picks the port: another process may take it between our probe and the
  // server's bind, so a few tries. A restart keeps the port clients were given.
  bool pick_port = port_ == 0;
  for (int attempt = 0;; ++attempt) {
    if (pick_port) {
      MOAT_ASSIGN_OR_RETURN(port_, FreeLoopbackPort());
    }
    bool port_taken = false;
    Status s = StartOnce(&port_taken);
    if (s.ok()) break;
    if (!(pick_port && port_taken && attempt < 4)) return s;
    Note("port " + std::to_string(port_) + " was taken; trying another");
  }
  if (!database_made_) MOAT_RETURN_IF_ERROR(CreateDatabase());
  return Status::Ok();
}

Status PostgresServer::StartOnce(bool* port_taken) {
  auto started = Clock::now();
  std::string log = dir_ + "/server.log";
  UniqueFd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log_fd) return ErrnoError("open(" + log + ")");
  off_t log_start = ::lseek(log_fd.get(), 0, SEEK_END);

  SpawnOptions o;
  o.argv = {bin_ + "/postgres",
            "-D",
            dir_ + "/data",
            "-p",
            std::to_string(port_),
            "-k",
            dir_,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off"};
  o.env = std::vector<std::string>{"PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=" + dir_};
  o.fds = {{1, log_fd.get()}, {2, log_fd.get()}};
  o.cwd = dir_;
  o.parent_death_signal = SIGKILL;
  if (drop_privileges_) {
    uid_t uid = uid_;
    gid_t gid = gid_;
    // Runs in the child between fork and exec: plain system calls only. Changing the user
    // clears the parent-death signal, so it is set again after.
    o.pre_exec = [uid, gid]() -> int {
      if (::setgroups(1, &gid) < 0 || ::setgid(gid) < 0 || ::setuid(uid) < 0) return errno;
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return errno;
      return 0;
    };
  }
  MOAT_ASSIGN_OR_RETURN(postmaster_, ChildProcess::Spawn(o));

  // Ready when it answers a ping as accepting connections (PQPING_REJECT: still starting or
  // recovering).
  std::string port = std::to_string(port_);
  const char* keys[] = {"host", "port", "dbname", "user", "connect_timeout", nullptr};
  const char* values[] = {"127.0.0.1", port.c_str(), "postgres", "postgres", "2", nullptr};
  auto deadline = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    if (postmaster_.Exited()) {
      // What this run wrote to the log.
      std::string this_run;
      if (auto text = ReadFile(log); text.ok() && static_cast<size_t>(log_start) <= text->size()) {
        this_run = text->substr(static_cast<size_t>(log_start));
      }
      *port_taken = this_run.find("Address already in use") != std::string::npos;
      std::string how = postmaster_.exit_status() ? DescribeWaitStatus(*postmaster_.exit_status())
                                                  : std::string("exited");
      postmaster_ = ChildProcess();
      return Internal(
          "postgres_server: postgres " + how + " at start:\n" +
          (this_run.size() > 1500 ? this_run.substr(this_run.size() - 1500) : this_run));
    }
    if (PQpingParams(keys, values, 0) == PQPING_OK) break;
    if (Clock::now() > deadline) {
      postmaster_.Kill();
      postmaster_ = ChildProcess();
      return DeadlineExceeded("postgres_server: not accepting connections after 30 s:\n" +
                              Tail(log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Note("started on 127.0.0.1:" + port + " (pid " + std::to_string(postmaster_.pid()) + ", " +
       std::to_string(SecondsSince(started)).substr(0, 4) + " s), data " + dir_ + "/data");
  return Status::Ok();
}

Status PostgresServer::CreateDatabase() {
  api::store::pg::ConnectOptions o;
  o.conninfo = "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/postgres";
  o.application_name = "postgres_server";
  MOAT_ASSIGN_OR_RETURN(auto conn, api::store::pg::Connection::Open(o));
  char* quoted = PQescapeIdentifier(conn.raw(), database_.data(), database_.size());
  if (quoted == nullptr) return InvalidArgument("postgres_server: bad database name " + database_);
  std::string sql = std::string("CREATE DATABASE ") + quoted;
  PQfreemem(quoted);
  MOAT_RETURN_IF_ERROR(conn.Run(sql).Annotate("postgres_server"));
  database_made_ = true;
  return Status::Ok();
}

Status PostgresServer::StopWith(int signal, const char* how) {
  if (!running()) return Status::Ok();
  auto started = Clock::now();
  MOAT_RETURN_IF_ERROR(postmaster_.Signal(signal));
  auto exited = postmaster_.Wait(std::chrono::seconds(15));
  if (!exited.ok()) {
    postmaster_.Kill();
    postmaster_ = ChildProcess();
    return DeadlineExceeded(std::string("postgres_server: still running 15 s after a ") + how +
                            " shutdown; killed");
  }
  postmaster_ = ChildProcess();
  Note(std::string("stopped (") + how + ", " + std::to_string(SecondsSince(started)).substr(0, 4) +
       " s)");
  return Status::Ok();
}

Status PostgresServer::Stop() {
  return StopWith(SIGINT, "fast");
}

Status PostgresServer::Kill() {
  return StopWith(SIGQUIT, "immediate");
}

}  // namespace moat::test_support

#include "guest/exec.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>

#include "common/child_process.h"
#include "guest/files.h"

namespace moat::guest {
namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

bool IsExecutableFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111) != 0;
}

Status SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoError("fcntl(O_NONBLOCK)");
  }
  return Status::Ok();
}

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

Result<Pipe> MakePipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

}  // namespace

Result<UserInfo> ResolveUser(const std::optional<std::string>& requested, const Defaults& defaults,
                             const UserTable& users) {
  if (requested && !requested->empty()) return users.Find(*requested);
  if (!defaults.user.empty()) return users.Find(defaults.user);
  if (users.Exists("user")) return users.Find("user");
  return users.Find("root");
}

Result<std::string> FindProgram(const std::string& program, const std::string& path_var,
                                const std::string& cwd) {
  if (program.empty()) return InvalidArgument("field \"argv\": empty program name");
  if (program.find('/') != std::string::npos) {
    std::string path = program.front() == '/' ? program : ResolvePath(program, cwd);
    if (!IsExecutableFile(path)) return NotFound("exec " + program + ": no such executable");
    return path;
  }
  size_t start = 0;
  while (start <= path_var.size()) {
    size_t end = path_var.find(':', start);
    if (end == std::string::npos) end = path_var.size();
    std::string dir = path_var.substr(start, end - start);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + program;
    if (dir.front() != '/') candidate = ResolvePath(candidate, cwd);
    if (IsExecutableFile(candidate)) return candidate;
    start = end + 1;
  }
  return NotFound("exec " + program + ": program not found in PATH");
}

bool IsBash(const std::string& program) {
  return program == "bash" || program == "/bin/bash" || program == "/usr/bin/bash";
}

Result<std::string> FindProgramOrShell(const std::string& program, const std::string& path_var,
                                       const std::string& cwd, const std::string& shell) {
  auto found = FindProgram(program, path_var, cwd);
  if (found.ok() || found.status().code() != ErrorCode::kNotFound || !IsBash(program)) {
    return found;
  }
  // bash's `-l -c CMD` (what the E2B client sends) means the same to a POSIX sh.
  auto sh = FindProgram(shell, path_var, cwd);
  return sh.ok() ? sh : found;
}

Result<ExecSpec> ParseExecRequest(const Json& request, const Defaults& defaults,
                                  const UserTable& users) {
  ExecSpec spec;
  MOAT_ASSIGN_OR_RETURN(auto argv, OptStringArray(request, "argv"));
  MOAT_ASSIGN_OR_RETURN(auto cmd, OptString(request, "cmd"));
  if (argv && cmd) return InvalidArgument("fields \"argv\" and \"cmd\" are exclusive");
  if (argv) {
    if (argv->empty()) return InvalidArgument("field \"argv\" must not be empty");
    spec.request_argv = *argv;
    spec.argv = *argv;
  } else if (cmd) {
    spec.cmd = *cmd;
    spec.argv = {"/bin/bash", "-l", "-c", *cmd};
  } else {
    return InvalidArgument("field \"argv\" or \"cmd\" is required");
  }
  MOAT_ASSIGN_OR_RETURN(auto env, OptStringMap(request, "env"));
  MOAT_ASSIGN_OR_RETURN(auto cwd, OptString(request, "cwd"));
  MOAT_ASSIGN_OR_RETURN(auto user, OptString(request, "user"));
  MOAT_ASSIGN_OR_RETURN(auto keep_stdin, OptBool(request, "stdin"));
  MOAT_ASSIGN_OR_RETURN(auto tag, OptString(request, "tag"));
  MOAT_ASSIGN_OR_RETURN(auto timeout, OptInt(request, "timeout_ms", 0, INT64_C(1) << 40));
  if (request.contains("pty") && !request["pty"].is_null()) {
    if (!request["pty"].is_object()) return InvalidArgument("field \"pty\" must be an object");
    PtySize size;
    MOAT_ASSIGN_OR_RETURN(auto cols, OptInt(request["pty"], "cols", 1, 65535));
    MOAT_ASSIGN_OR_RETURN(auto rows, OptInt(request["pty"], "rows", 1, 65535));
    if (cols) size.cols = static_cast<uint16_t>(*cols);
    if (rows) size.rows = static_cast<uint16_t>(*rows);
    spec.pty = size;
  }
  MOAT_ASSIGN_OR_RETURN(spec.user, ResolveUser(user, defaults, users));
  spec.keep_stdin = keep_stdin.value_or(false);
  spec.tag = tag.value_or("");
  spec.timeout_ms = timeout.value_or(0);

  // Working directory: the request's (relative to home), the identity's, or home; "/" when the
  // home directory does not exist (system users such as nobody).
  std::string home = spec.user.home.empty() ? "/" : spec.user.home;
  if (cwd && !cwd->empty()) {
    spec.cwd = ResolvePath(*cwd, home);
  } else if (!defaults.workdir.empty()) {
    spec.cwd = ResolvePath(defaults.workdir, home);
  } else {
    spec.cwd = ResolvePath(home, "/");
  }
  struct stat st {};
  if (::stat(spec.cwd.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) {
    if ((cwd && !cwd->empty()) || !defaults.workdir.empty()) {
      return NotFound("cwd " + spec.cwd + " is not an existing directory");
    }
    spec.cwd = "/";
  }

  std::map<std::string, std::string> vars = {
      {"PATH", kDefaultPath},
      {"HOME", home},
      {"USER", spec.user.name},
      {"LOGNAME", spec.user.name},
      {"SHELL", spec.user.shell.empty() ? "/bin/sh" : spec.user.shell},
  };
  if (spec.pty) vars["TERM"] = "xterm-256color";
  for (const auto& [k, v] : defaults.env) vars[k] = v;
  if (env) {
    for (const auto& [k, v] : *env) {
      if (k.empty() || k.find('=') != std::string::npos) {
        return InvalidArgument("field \"env\": bad variable name \"" + k + "\"");
      }
      vars[k] = v;
    }
  }
  for (const auto& [k, v] : vars) spec.env.push_back(k + "=" + v);
  MOAT_ASSIGN_OR_RETURN(spec.argv[0], FindProgramOrShell(spec.argv[0], vars["PATH"], spec.cwd));
  return spec;
}

Status SetPtySize(int master_fd, PtySize size) {
  winsize ws{};
  ws.ws_col = size.cols;
  ws.ws_row = size.rows;
  // TIOCSWINSZ reads one struct winsize from the pointer; the terminal sends SIGWINCH.
  if (::ioctl(master_fd, TIOCSWINSZ, &ws) < 0) return ErrnoError("ioctl(TIOCSWINSZ)");
  return Status::Ok();
}

Result<SpawnedProcess> SpawnExec(const ExecSpec& spec) {
  SpawnOptions opts;
  opts.argv = spec.argv;
  opts.env = spec.env;
  opts.cwd = spec.cwd;
  opts.new_session = true;
  SpawnedProcess out;
  UniqueFd child_stdin, child_stdout, child_stderr, pty_slave;
  if (spec.pty) {
    UniqueFd master(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!master) return ErrnoError("posix_openpt");
    if (::grantpt(master.get()) < 0) return ErrnoError("grantpt");
    if (::unlockpt(master.get()) < 0) return ErrnoError("unlockpt");
    char name[128];
    if (::ptsname_r(master.get(), name, sizeof name) != 0) return ErrnoError("ptsname_r");
    pty_slave.Reset(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!pty_slave) return ErrnoError(std::string("open(") + name + ")");
    // The terminal belongs to the user it runs for (tools reopen it by name).
    if (::fchown(pty_slave.get(), spec.user.uid, static_cast<gid_t>(-1)) < 0) {
      return ErrnoError("fchown(pty)");
    }
    MOAT_RETURN_IF_ERROR(SetPtySize(master.get(), *spec.pty));
    // Input goes through a second handle on the master so that reading and writing are
    // separate epoll registrations. O_NONBLOCK is shared by both (one open file description).
    out.stdin_fd.Reset(::fcntl(master.get(), F_DUPFD_CLOEXEC, 0));
    if (!out.stdin_fd) return ErrnoError("dup(pty master)");
    MOAT_RETURN_IF_ERROR(SetNonBlocking(master.get()));
    out.stdout_fd = std::move(master);
    opts.fds = {{0, pty_slave.get()}, {1, pty_slave.get()}, {2, pty_slave.get()}};
  } else {
    if (spec.keep_stdin) {
      MOAT_ASSIGN_OR_RETURN(Pipe in, MakePipe());
      MOAT_RETURN_IF_ERROR(SetNonBlocking(in.write.get()));
      out.stdin_fd = std::move(in.write);
      child_stdin = std::move(in.read);
      opts.fds.emplace_back(0, child_stdin.get());
    }
    MOAT_ASSIGN_OR_RETURN(Pipe o, MakePipe());
    MOAT_ASSIGN_OR_RETURN(Pipe e, MakePipe());
    MOAT_RETURN_IF_ERROR(SetNonBlocking(o.read.get()));
    MOAT_RETURN_IF_ERROR(SetNonBlocking(e.read.get()));
    out.stdout_fd = std::move(o.read);
    out.stderr_fd = std::move(e.read);
    child_stdout = std::move(o.write);
    child_stderr = std::move(e.write);
    opts.fds.emplace_back(1, child_stdout.get());
    opts.fds.emplace_back(2, child_stderr.get());
  }
  // Runs in the child between fork and exec: only async-signal-safe calls, no allocation (the
  // groups vector was built before the fork).
  const bool pty = spec.pty.has_value();
  const uid_t uid = spec.user.uid;
  const gid_t gid = spec.user.gid;
  const gid_t* groups = spec.user.groups.data();
  const size_t ngroups = spec.user.groups.size();
  opts.pre_exec = [pty, uid, gid, groups, ngroups]() -> int {
    // TIOCSCTTY makes fd 0 (the PTY slave) the controlling terminal of the new session.
    if (pty && ::ioctl(0, TIOCSCTTY, 0) < 0) return errno;
    if (::getuid() == 0) {
      if (::setgroups(ngroups, groups) < 0) return errno;
      if (::setgid(gid) < 0) return errno;
      if (::setuid(uid) < 0) return errno;
    } else if (uid != ::getuid()) {
      return EPERM;  // not root (tests outside a VM): cannot switch users
    }
    return 0;
  };
  MOAT_ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn(opts));
  out.pid = child.Release();
  return out;
}

}  // namespace moat::guest

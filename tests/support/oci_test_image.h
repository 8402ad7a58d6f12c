// For the tests of templates from OCI images: a private registry (Debian's docker-registry, on a
// free loopback port, storage in the test's temp dir) and a small image made on the spot with
// umoci (a static busybox as its whole userland), pushed into it with skopeo. Nothing comes
// from the internet. Header-only: link moat_agent_image, moat_common and crypt (bcrypt for the
// registry's htpasswd).
#pragma once

#include <arpa/inet.h>
#include <crypt.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/external_tool.h"
#include "agent/oci_image.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::test_support {

// The first of `tools` (absolute paths, or names looked up in the usual bin dirs) that is not
// there, or "" when all are.
inline std::string MissingTool(const std::vector<std::string>& tools) {
  for (const auto& t : tools) {
    bool found = false;
    if (t.front() == '/') {
      found = ::access(t.c_str(), X_OK) == 0;
    } else {
      for (const char* dir : {"/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}) {
        if (::access((std::string(dir) + "/" + t).c_str(), X_OK) == 0) found = true;
      }
    }
    if (!found) return t;
  }
  return "";
}

// Runs a tool to its end; an error carrying its stderr unless it exits 0.
inline Status RunOk(std::vector<std::string> argv, const std::string& cwd_env_home = "/tmp") {
  auto out = agent::RunExternalTool(
      {.argv = argv,
       .env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=" + cwd_env_home},
       .timeout = std::chrono::minutes(2)});
  if (!out.ok()) return out.status();
  if (!out->succeeded()) return Internal(argv[0] + " " + argv[1] + ": " + out->Describe());
  return Status::Ok();
}

// A port on 127.0.0.1 that nothing listens on right now.
inline Result<int> FreeLoopbackPort() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return ErrnoError("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // bind/getsockname take a sockaddr_in through the generic sockaddr pointer, with its size.
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) return ErrnoError("bind");
  socklen_t len = sizeof a;
  if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) < 0) {
    return ErrnoError("getsockname");
  }
  return static_cast<int>(ntohs(a.sin_port));
}

// Does an HTTP server on 127.0.0.1:port answer GET /v2/ (200, or 401 when it wants a login)?
inline bool RegistryAnswers(int port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // connect takes the sockaddr_in through the generic pointer, with its size.
  if (!s || ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) return false;
  const char req[] = "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (::write(s.get(), req, sizeof req - 1) != static_cast<ssize_t>(sizeof req - 1)) return false;
  char buf[64] = {};
  ssize_t n = ::read(s.get(), buf, sizeof buf - 1);
  std::string status(buf, static_cast<size_t>(std::max<ssize_t>(n, 0)));
  return status.find(" 200 ") != std::string::npos || status.find(" 401 ") != std::string::npos;
}

// docker-registry serving from `dir`/storage on a free loopback port; killed on destruction.
// With `auth`, every request needs that user and password (htpasswd, over plain HTTP).
class TestRegistry {
 public:
  static Result<std::unique_ptr<TestRegistry>> Start(
      const std::string& dir, const std::optional<agent::RegistryAuth>& auth = std::nullopt) {
    MOAT_RETURN_IF_ERROR(MakeDirs(dir + "/storage"));
    std::string auth_config;
    if (auth) {
      // bcrypt, the only hash docker-registry's htpasswd takes; few rounds, it is a test.
      const char* salt = ::crypt_gensalt("$2b$", 5, nullptr, 0);
      const char* hash = salt != nullptr ? ::crypt(auth->password.c_str(), salt) : nullptr;
      if (hash == nullptr || hash[0] == '*') return Internal("crypt(bcrypt) failed");
      MOAT_RETURN_IF_ERROR(
          WriteFileAtomic(dir + "/htpasswd", auth->username + ":" + hash + "\n", 0600));
      auth_config = "auth:\n  htpasswd:\n    realm: moat-test\n    path: " + dir + "/htpasswd\n";
    }
    // Another process may take the port between the probe and the registry's bind: retry.
    Status last = Internal("not started");
    for (int attempt = 0; attempt < 5; ++attempt) {
      MOAT_ASSIGN_OR_RETURN(int port, FreeLoopbackPort());
      std::string config = dir + "/registry.yml";
      MOAT_RETURN_IF_ERROR(
          WriteFileAtomic(config,
                          "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                          "storage:\n  filesystem:\n    rootdirectory: " +
                              dir + "/storage\n  delete:\n    enabled: true\n" + auth_config +
                              "http:\n  addr: 127.0.0.1:" + std::to_string(port) + "\n"));
      UniqueFd log(
          ::open((dir + "/registry.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
      if (!log) return ErrnoError("open(registry.log)");
      auto child = ChildProcess::Spawn({.argv = {"/usr/bin/docker-registry", "serve", config},
                                        .env = std::vector<std::string>{"PATH=/usr/bin:/bin"},
                                        .fds = {{1, log.get()}, {2, log.get()}}});
      if (!child.ok()) return child.status();
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (std::chrono::steady_clock::now() < deadline && !child->Exited()) {
        if (RegistryAnswers(port)) {
          auto r = std::unique_ptr<TestRegistry>(new TestRegistry());
          r->child_ = std::move(*child);
          r->port_ = port;
          return r;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      auto text = ReadFile(dir + "/registry.log");
      last = Unavailable("docker-registry did not answer on port " + std::to_string(port) + ": " +
                         (text.ok() ? text->substr(text->size() > 2000 ? text->size() - 2000 : 0)
                                    : std::string()));
    }
    return last;
  }

  int port() const { return port_; }
  std::string host() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  TestRegistry() = default;
  ChildProcess child_;
  int port_ = 0;
};

// What the test image says in its config.
struct TestImageConfig {
  std::vector<std::string> env = {"MOAT_IMAGE=busybox", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
  std::string user = "1000";
  std::string workdir = "/srv/app";
};

// The busybox applets the image links; `sh` among them, no bash.
inline const std::vector<std::string>& BusyboxApplets() {
  static const std::vector<std::string> kApplets = {
      "sh",    "ash",    "echo", "cat",    "ls",       "id", "env",  "true",  "false",
      "sleep", "whoami", "pwd",  "mkdir",  "rm",       "cp", "mv",   "ln",    "chmod",
      "touch", "head",   "tail", "grep",   "sed",      "ps", "kill", "uname", "sync",
      "stat",  "test",   "wc",   "printf", "hostname", "tr", "find"};
  return kApplets;
}

// Makes the image in an OCI layout `layout`:`tag` (work files under `work`): /bin/busybox (from
// the host's busybox-static), its applets as symlinks in /bin, /etc/os-release with a marker,
// /srv/app, and `config`.
inline Status MakeBusyboxImage(const std::string& work, const std::string& layout,
                               const std::string& tag, const TestImageConfig& config = {}) {
  const std::string image = layout + ":" + tag;
  MOAT_RETURN_IF_ERROR(RunOk({"umoci", "init", "--layout", layout}, work));
  MOAT_RETURN_IF_ERROR(RunOk({"umoci", "new", "--image", image}, work));
  const std::string bundle = work + "/bundle";
  MOAT_RETURN_IF_ERROR(RunOk({"umoci", "unpack", "--image", image, bundle}, work));
  const std::string rootfs = bundle + "/rootfs";
  for (const char* d : {"/bin", "/etc", "/srv/app", "/usr/bin"}) {
    MOAT_RETURN_IF_ERROR(MakeDirs(rootfs + d));
  }
  MOAT_RETURN_IF_ERROR(RunOk({"cp", "/bin/busybox", rootfs + "/bin/busybox"}, work));
  for (const auto& applet : BusyboxApplets()) {
    if (::symlink("busybox", (rootfs + "/bin/" + applet).c_str()) < 0) {
      return ErrnoError("symlink(" + applet + ")");
    }
  }
  MOAT_RETURN_IF_ERROR(
      WriteFileAtomic(rootfs + "/etc/os-release", "ID=moat-busybox\nNAME=\"moat test image\"\n"));
  MOAT_RETURN_IF_ERROR(RunOk({"umoci", "repack", "--image", image, bundle}, work));
  std::vector<std::string> cfg = {"umoci", "config", "--image", image};
  for (const auto& e : config.env) cfg.insert(cfg.end(), {"--config.env", e});
  if (!config.user.empty()) cfg.insert(cfg.end(), {"--config.user", config.user});
  if (!config.workdir.empty()) cfg.insert(cfg.end(), {"--config.workingdir", config.workdir});
  MOAT_RETURN_IF_ERROR(RunOk(cfg, work));
  return RemoveTree(bundle);
}

// skopeo copy oci:LAYOUT:TAG docker://REGISTRY/REPO (plain HTTP).
inline Status PushImage(const std::string& layout_image, const std::string& dest,
                        const std::string& home,
                        const std::optional<agent::RegistryAuth>& auth = std::nullopt) {
  std::vector<std::string> argv = {"skopeo", "--insecure-policy", "copy", "--quiet",
                                   "--dest-tls-verify=false"};
  if (auth) argv.insert(argv.end(), {"--dest-creds", auth->username + ":" + auth->password});
  argv.insert(argv.end(), {"oci:" + layout_image, "docker://" + dest});
  return RunOk(argv, home);
}

}  // namespace moat::test_support

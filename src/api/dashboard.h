// What the dashboard's routes share across requests (routes/dashboard.cc): where its files are,
// the URL of moatd's own port (the web terminal calls envd through it), failed sign-ins per
// client address, and the terminals each session has open.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

#include "api/dashboard_session.h"
#include "api/web_terminal.h"

namespace moat::api {

class DashboardState {
 public:
  explicit DashboardState(std::string files_dir) : files_dir_(std::move(files_dir)) {}

  // The directory the dashboard's files are served from.
  std::string files_dir() const {
    std::lock_guard lock(mu_);
    return files_dir_;
  }
  void set_files_dir(std::string dir) {
    std::lock_guard lock(mu_);
    files_dir_ = std::move(dir);
  }
  // "http://127.0.0.1:3000"; empty until the server listens.
  std::string moatd_url() const {
    std::lock_guard lock(mu_);
    return moatd_url_;
  }
  void set_moatd_url(std::string url) {
    std::lock_guard lock(mu_);
    moatd_url_ = std::move(url);
  }

  LoginLimiter& logins() { return logins_; }
  TerminalSlots& terminals() { return terminals_; }
  // Tests shorten the terminal's timeouts.
  WebTerminalOptions terminal_options;

 private:
  mutable std::mutex mu_;
  std::string files_dir_;
  std::string moatd_url_;
  LoginLimiter logins_;
  TerminalSlots terminals_;
};

// The URL a server listening on `listen_host`:`port` is reached at from this machine: a
// wildcard address through loopback.
std::string LocalUrlOf(const std::string& listen_host, uint16_t port);

}  // namespace moat::api

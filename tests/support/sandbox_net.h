// Helpers of the e2e tests that run sandboxes of an Agent with networking: a command's output,
// the probe script's verdicts from inside a guest, a page fetched from the host (the way moatd's
// port proxy connects), and the NetConfig of a test's own pool.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "agent/sandbox.h"
#include "net/net_config.h"
#include "net/net_tools.h"
#include "support/test_internet.h"

namespace moat::test_support {

// The stdout of `cmd` run by the guest's shell (60 s at most).
inline std::string GuestSh(const std::shared_ptr<agent::Sandbox>& sb, const std::string& cmd) {
  auto g = sb->Guest();
  EXPECT_TRUE(g.ok()) << g.status().ToString();
  if (!g.ok()) return "";
  channel::ExecRequest req;
  req.cmd = cmd;
  req.timeout_ms = 60000;
  auto r = (*g)->Run(req, channel::GuestClient::Clock::now() + std::chrono::seconds(70));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r->stdout_data : "";
}

// kProbeScript's verdict on each URL, from inside the guest: {"url": "ok:..." | "err:..."}.
inline nlohmann::json GuestProbe(const std::shared_ptr<agent::Sandbox>& sb,
                                 const std::vector<std::string>& urls) {
  auto g = sb->Guest();
  EXPECT_TRUE(g.ok());
  if (!g.ok()) return nlohmann::json::object();
  channel::ExecRequest req;
  req.argv = {"python3", "-c", kProbeScript};
  req.argv.insert(req.argv.end(), urls.begin(), urls.end());
  req.timeout_ms = 60000;
  auto r = (*g)->Run(req, channel::GuestClient::Clock::now() + std::chrono::seconds(70));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return nlohmann::json::object();
  auto j = nlohmann::json::parse(r->stdout_data, nullptr, false);
  EXPECT_TRUE(j.is_object()) << r->stdout_data << r->stderr_data;
  std::printf("probe from %s: %s\n", sb->id().c_str(), j.dump().c_str());
  return j.is_object() ? j : nlohmann::json::object();
}

// What the host gets from http://address:port/, retried (60 × 0.5 s at most) until it contains
// `expect`, while the server inside starts.
inline std::string FetchFromHost(const std::string& address, int port, const std::string& expect) {
  std::string url = "http://" + address + ":" + std::to_string(port) + "/";
  std::string got;
  for (int i = 0; i < 60; ++i) {
    auto r = net::RunTool({"sh", "-c", "curl -s --max-time 2 " + url + " || true"}, {}, -1,
                          std::chrono::seconds(20));
    got = r.ok() ? *r : "";
    if (got.find(expect) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return got;
}

// A pool of the test's own (10.<second_octet>.<pid % 250>.0/24), slot records under `dir`/net,
// DNS to the test internet's resolver.
inline net::NetConfig TestNetConfig(const std::string& dir, int second_octet) {
  net::NetConfig n;
  n.pool = *net::Ipv4Cidr::Parse("10." + std::to_string(second_octet) + "." +
                                 std::to_string(::getpid() % 250) + ".0/24");
  n.state_dir = dir + "/net";
  n.dns_servers = {*net::Ipv4Address::Parse(TestInternet::kResolver)};
  return n;
}

}  // namespace moat::test_support

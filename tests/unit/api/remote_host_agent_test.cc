// RemoteHostAgent → a real AgentServer on 127.0.0.1:0 → FakeHostAgent: the HTTP form of
// HostAgent carries every call's values and errors both ways, and the agent refuses what is not
// signed for it before the host sees anything.
#include "api/fleet/remote_host_agent.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "api/fleet/agent_wire.h"
#include "host/agent_server.h"
#include "support/fake_host_agent.h"
#include "support/raw_http.h"

namespace moat::api::fleet {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using test_support::Exchange;
using test_support::Reply;

constexpr std::string_view kSecret = "fleet-token-for-tests-0123456789abcdef";
constexpr const char* kHost = "host-a";

FleetToken Token(std::string_view secret = kSecret) {
  return std::move(FleetToken::FromSecret(std::string(secret))).value();
}

// "sbx" + n, padded to a sandbox id.
std::string Id(int n) {
  std::string digits = std::to_string(n);
  return "sbx" + std::string(17 - digits.size(), '0') + digits;
}

// The fake, keeping the values it was given and counting every call that reaches it.
class RecordingHostAgent : public test_support::FakeHostAgent {
 public:
  RecordingHostAgent() : FakeHostAgent(kHost) {}

  std::atomic<int> seen{0};
  std::mutex mu;
  HostSandboxStart last_start;
  std::vector<std::string> last_children;
  std::string last_snapshot_name;
  json last_egress;
  std::map<std::string, std::string> faults;  // Probe answers running with this fault
  std::optional<HostSandboxUsage> usage;      // Usage answers this for running sandboxes

  HostTemplateInfo base_template() override {
    ++seen;
    return FakeHostAgent::base_template();
  }
  Result<HostInventory> Inventory() override {
    ++seen;
    return FakeHostAgent::Inventory();
  }
  Result<HostSandboxStatus> Probe(const std::string& id) override {
    ++seen;
    auto s = FakeHostAgent::Probe(id);
    std::lock_guard lock(mu);
    if (auto it = faults.find(id); it != faults.end() && s.ok()) s->fault = it->second;
    return s;
  }
  Status Create(const HostSandboxStart& start) override {
    ++seen;
    {
      std::lock_guard lock(mu);
      last_start = start;
    }
    return FakeHostAgent::Create(start);
  }
  Status Kill(const std::string& id) override {
    ++seen;
    return FakeHostAgent::Kill(id);
  }
  Status Pause(const std::string& id, bool keep_memory = true) override {
    ++seen;
    return FakeHostAgent::Pause(id, keep_memory);
  }
  Status Resume(const std::string& id) override {
    ++seen;
    return FakeHostAgent::Resume(id);
  }
  Status Fork(const std::string& id, const std::vector<std::string>& child_ids) override {
    ++seen;
    {
      std::lock_guard lock(mu);
      last_children = child_ids;
    }
    return FakeHostAgent::Fork(id, child_ids);
  }
  Result<std::string> CreateSnapshot(const std::string& id, const std::string& name) override {
    ++seen;
    {
      std::lock_guard lock(mu);
      last_snapshot_name = name;
    }
    return FakeHostAgent::CreateSnapshot(id, name);
  }
  Status DeleteSnapshot(const std::string& snapshot_id) override {
    ++seen;
    return FakeHostAgent::DeleteSnapshot(snapshot_id);
  }
  Status SetEgress(const std::string& id, const json& egress) override {
    ++seen;
    {
      std::lock_guard lock(mu);
      last_egress = egress;
    }
    return FakeHostAgent::SetEgress(id, egress);
  }
  Result<HostSandboxUsage> Usage(const std::string& id) override {
    ++seen;
    auto u = FakeHostAgent::Usage(id);
    std::lock_guard lock(mu);
    if (u.ok() && usage) return *usage;
    return u;
  }
};

class RemoteHostAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = host::AgentServer::Start(fake_, Token(), http::ServerOptions{});
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    endpoint_ = "http://127.0.0.1:" + std::to_string(server_->port());
    remote_ = Remote(kHost, Token());
  }

  std::unique_ptr<RemoteHostAgent> Remote(const std::string& host_id, FleetToken token,
                                          RemoteHostAgentOptions options = {}) {
    auto r = RemoteHostAgent::ForEndpoint(host_id, endpoint_, std::move(token), options);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return std::move(r).value();
  }

  // A request as written, on a connection of its own; `fleet`: the X-Moat-Fleet value, if any.
  Reply Raw(const std::string& method, const std::string& target, const std::string& fleet,
            const std::string& body = "") {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    req += "Connection: close\r\n";
    if (!fleet.empty()) req += "X-Moat-Fleet: " + fleet + "\r\n";
    if (!body.empty() || method == "POST" || method == "PUT") {
      req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n";
    }
    return Exchange(server_->port(), req + "\r\n" + body);
  }
  // The same, signed for `host_id` now.
  Reply Signed(const std::string& method, const std::string& target, const std::string& body = "",
               const std::string& host_id = kHost) {
    return Raw(method, target, Token().Header(UnixNow(), method, target, host_id), body);
  }
  static std::string CodeOf(const Reply& r) {
    json j = json::parse(r.body, nullptr, false);
    return j.is_object() && j.contains("code") && j["code"].is_string()
               ? j["code"].get<std::string>()
               : "(" + r.body + ")";
  }

  RecordingHostAgent fake_;
  std::unique_ptr<host::AgentServer> server_;
  std::string endpoint_;
  std::unique_ptr<RemoteHostAgent> remote_;
};

TEST_F(RemoteHostAgentTest, CreateCarriesEnvVarsAndEgress) {
  HostSandboxStart start{.id = Id(1),
                         .template_id = "base",
                         .env_vars = {{"A", "1"}, {"QUOTED", "x \"y\"\nz"}, {"EMPTY", ""}},
                         .egress = json{{"allowOut", {"10.0.0.0/8"}}, {"denyOut", json::array()}}};
  ASSERT_TRUE(remote_->Create(start).ok());
  {
    std::lock_guard lock(fake_.mu);
    EXPECT_EQ(fake_.last_start.id, start.id);
    EXPECT_EQ(fake_.last_start.template_id, "base");
    EXPECT_EQ(fake_.last_start.env_vars, start.env_vars);
    EXPECT_EQ(fake_.last_start.egress, start.egress);
  }
  // A null policy (the default) stays null; a snapshot id is a template too.
  HostSandboxStart plain{.id = Id(2), .template_id = "snap0123456789abcdef"};
  ASSERT_TRUE(remote_->Create(plain).ok());
  std::lock_guard lock(fake_.mu);
  EXPECT_TRUE(fake_.last_start.egress.is_null());
  EXPECT_TRUE(fake_.last_start.env_vars.empty());
  EXPECT_EQ(fake_.last_start.template_id, "snap0123456789abcdef");
}

TEST_F(RemoteHostAgentTest, LifecycleCallsRoundTrip) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  auto probe = remote_->Probe(Id(1));
  ASSERT_TRUE(probe.ok()) << probe.status().ToString();
  EXPECT_EQ(probe->kind, HostSandboxStatus::Kind::kRunning);
  EXPECT_FALSE(probe->fault.has_value());

  ASSERT_TRUE(remote_->Pause(Id(1)).ok());
  EXPECT_EQ(remote_->Probe(Id(1))->kind, HostSandboxStatus::Kind::kPaused);
  ASSERT_TRUE(remote_->Resume(Id(1)).ok());
  EXPECT_EQ(remote_->Probe(Id(1))->kind, HostSandboxStatus::Kind::kRunning);

  ASSERT_TRUE(remote_->SetEgress(Id(1), json{{"allowOut", {"1.1.1.1"}}}).ok());
  {
    std::lock_guard lock(fake_.mu);
    EXPECT_EQ(fake_.last_egress, (json{{"allowOut", {"1.1.1.1"}}}));
  }
  ASSERT_TRUE(remote_->SetEgress(Id(1), nullptr).ok());
  {
    std::lock_guard lock(fake_.mu);
    EXPECT_TRUE(fake_.last_egress.is_null());
  }

  ASSERT_TRUE(remote_->Kill(Id(1)).ok());
  EXPECT_EQ(remote_->Probe(Id(1))->kind, HostSandboxStatus::Kind::kGone);
  EXPECT_EQ(fake_.CountCalls("kill " + Id(1)), 1);
}

TEST_F(RemoteHostAgentTest, ProbeCarriesAFault) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  {
    std::lock_guard lock(fake_.mu);
    fake_.faults[Id(1)] = "guest sent a frame of 2 GiB";
  }
  auto probe = remote_->Probe(Id(1));
  ASSERT_TRUE(probe.ok());
  EXPECT_EQ(probe->kind, HostSandboxStatus::Kind::kRunning);
  EXPECT_EQ(probe->fault, "guest sent a frame of 2 GiB");
}

TEST_F(RemoteHostAgentTest, ForkCarriesTheChildIds) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  std::vector<std::string> children = {Id(11), Id(12), Id(13)};
  ASSERT_TRUE(remote_->Fork(Id(1), children).ok());
  std::lock_guard lock(fake_.mu);
  EXPECT_EQ(fake_.last_children, children);
  for (const auto& c : children) EXPECT_EQ(fake_.running.count(c), 1u) << c;
}

TEST_F(RemoteHostAgentTest, SnapshotsRoundTrip) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  auto snap = remote_->CreateSnapshot(Id(1), "my snapshot ✓");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(*snap, "snap1aaaaaaaaaaaaaaa");
  {
    std::lock_guard lock(fake_.mu);
    EXPECT_EQ(fake_.last_snapshot_name, "my snapshot ✓");
  }
  auto inv = remote_->Inventory();
  ASSERT_TRUE(inv.ok());
  EXPECT_EQ(inv->snapshots, std::vector<std::string>{*snap});
  ASSERT_TRUE(remote_->DeleteSnapshot(*snap).ok());
  EXPECT_EQ(remote_->DeleteSnapshot(*snap).code(), ErrorCode::kNotFound);
}

TEST_F(RemoteHostAgentTest, UsageCarriesEveryField) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  HostSandboxUsage want{.pss_bytes = (1ull << 40) + 1,
                        .pss_file_bytes = 12345,
                        .rss_bytes = 0xffffffffffffffffull,
                        .memory_total_bytes = 512ull << 20,
                        .disk_bytes = 77,
                        .disk_total_bytes = 1ull << 30,
                        .vcpus = 3,
                        .cpu_seconds = 12.375,
                        .vmm_age_seconds = 0.125,
                        .vmm_pid = 4242,
                        .vmm_start_time = 987654321};
  {
    std::lock_guard lock(fake_.mu);
    fake_.usage = want;
  }
  auto u = remote_->Usage(Id(1));
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->pss_bytes, want.pss_bytes);
  EXPECT_EQ(u->pss_file_bytes, want.pss_file_bytes);
  EXPECT_EQ(u->rss_bytes, want.rss_bytes);
  EXPECT_EQ(u->memory_total_bytes, want.memory_total_bytes);
  EXPECT_EQ(u->disk_bytes, want.disk_bytes);
  EXPECT_EQ(u->disk_total_bytes, want.disk_total_bytes);
  EXPECT_EQ(u->vcpus, want.vcpus);
  EXPECT_EQ(u->cpu_seconds, want.cpu_seconds);
  EXPECT_EQ(u->vmm_age_seconds, want.vmm_age_seconds);
  EXPECT_EQ(u->vmm_pid, want.vmm_pid);
  EXPECT_EQ(u->vmm_start_time, want.vmm_start_time);
  EXPECT_EQ(remote_->Usage(Id(2)).status().code(), ErrorCode::kNotFound);
}

TEST_F(RemoteHostAgentTest, InventoryListsEveryKind) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  ASSERT_TRUE(remote_->Create({.id = Id(2), .template_id = "base"}).ok());
  ASSERT_TRUE(remote_->Pause(Id(2)).ok());
  auto inv = remote_->Inventory();
  ASSERT_TRUE(inv.ok()) << inv.status().ToString();
  EXPECT_EQ(inv->running, std::vector<std::string>{Id(1)});
  EXPECT_EQ(inv->paused, std::vector<std::string>{Id(2)});
  EXPECT_TRUE(inv->snapshots.empty());
  EXPECT_TRUE(inv->cleaned.empty());
}

TEST_F(RemoteHostAgentTest, TemplateIsFetchedOnceAndCached) {
  EXPECT_EQ(remote_->host_id(), kHost);
  HostTemplateInfo t = remote_->base_template();
  EXPECT_EQ(t.name, "base");
  EXPECT_EQ(t.vcpus, 2u);
  EXPECT_EQ(t.memory_mib, 512u);
  EXPECT_EQ(t.disk_mib, 1024u);
  int seen = fake_.seen;
  fake_.tmpl.vcpus = 8;  // not fetched again
  EXPECT_EQ(remote_->base_template().vcpus, 2u);
  EXPECT_EQ(fake_.seen, seen);
}

TEST_F(RemoteHostAgentTest, TemplateOfAnUnreachableHostIsEmptyAndFetchedLater) {
  auto other = RemoteHostAgent::ForEndpoint(
      kHost, "http://127.0.0.1:" + std::to_string(test_support::RefusedLoopbackPort()), Token());
  ASSERT_TRUE(other.ok());
  HostTemplateInfo t = (*other)->base_template();
  EXPECT_EQ(t.name, "");
  EXPECT_EQ(t.vcpus, 0u);
  EXPECT_EQ((*other)->FetchTemplate().status().code(), ErrorCode::kUnavailable);
}

TEST_F(RemoteHostAgentTest, EveryErrorCodeMapsBack) {
  struct Case {
    ErrorCode code;
    int http;
  };
  for (Case c :
       {Case{ErrorCode::kNotFound, 404}, Case{ErrorCode::kAlreadyExists, 409},
        Case{ErrorCode::kFailedPrecondition, 409}, Case{ErrorCode::kAborted, 409},
        Case{ErrorCode::kInvalidArgument, 400}, Case{ErrorCode::kUnavailable, 503},
        Case{ErrorCode::kInternal, 500}, Case{ErrorCode::kResourceExhausted, 429},
        Case{ErrorCode::kDeadlineExceeded, 504}, Case{ErrorCode::kPermissionDenied, 403}}) {
    std::string name(ErrorCodeName(c.code));
    std::string message = "the host says " + name + " \"quoted\"";
    fake_.fail_next["pause"] = Status(c.code, message);
    Status s = remote_->Pause(Id(1));
    EXPECT_EQ(s.code(), c.code) << name << ": " << s.ToString();
    EXPECT_EQ(s.message(), message) << name;

    // On the wire: the documented HTTP status and {"code","message"}.
    fake_.fail_next["pause"] = Status(c.code, message);
    Reply r = Signed("POST", SandboxPath(Id(1)) + "/pause");
    EXPECT_EQ(r.status, c.http) << name;
    EXPECT_EQ(CodeOf(r), name);
  }
  // The fake's own errors, without injection.
  EXPECT_EQ(remote_->Kill(Id(5)).code(), ErrorCode::kNotFound);
  ASSERT_TRUE(remote_->Create({.id = Id(5), .template_id = "base"}).ok());
  EXPECT_EQ(remote_->Create({.id = Id(5), .template_id = "base"}).code(),
            ErrorCode::kAlreadyExists);
  fake_.fail_next["create"] = Status(ErrorCode::kAborted, "raced");
  EXPECT_EQ(remote_->Create({.id = Id(6), .template_id = "base"}).code(), ErrorCode::kAborted);
  fake_.fail_next["fork"] = FailedPrecondition("not running");
  EXPECT_EQ(remote_->Fork(Id(5), {Id(7)}).code(), ErrorCode::kFailedPrecondition);
  fake_.fail_next["snapshot"] = Internal("disk full");
  auto snap = remote_->CreateSnapshot(Id(5), "x");
  EXPECT_EQ(snap.status().code(), ErrorCode::kInternal);
  EXPECT_EQ(snap.status().message(), "disk full");
}

TEST_F(RemoteHostAgentTest, HealthzNeedsNoTokenAndNamesTheHost) {
  Reply r = Raw("GET", "/healthz", "");
  EXPECT_EQ(r.status, 200);
  json j = json::parse(r.body, nullptr, false);
  EXPECT_EQ(j, (json{{"role", "agent"}, {"hostID", kHost}}));
  EXPECT_TRUE(remote_->CheckHealth().ok());
  Status wrong = Remote("host-b", Token())->CheckHealth();
  EXPECT_EQ(wrong.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(wrong.message().find("host-a"), std::string::npos) << wrong.message();
}

TEST_F(RemoteHostAgentTest, RefusesRequestsWithoutAValidSignature) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  int seen = fake_.seen;
  std::string target = SandboxPath(Id(1));
  FleetToken token = Token();

  // No header.
  Reply none = Raw("DELETE", target, "");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(CodeOf(none), "unauthenticated");
  EXPECT_EQ(Raw("GET", "/v1/inventory", "").status, 401);
  // Unknown routes too: nothing is revealed without a token.
  EXPECT_EQ(Raw("GET", "/v1/nothing-here", "").status, 401);
  // A body is refused before it is read.
  EXPECT_EQ(
      Raw("POST", "/v1/sandboxes", "", R"({"id":")" + Id(2) + R"(","templateID":"base"})").status,
      401);
  // Another token.
  FleetToken other = Token("another-fleet-token-0123456789abcdef");
  EXPECT_EQ(Raw("DELETE", target, other.Header(UnixNow(), "DELETE", target, kHost)).status, 401);
  // Stale and future times.
  EXPECT_EQ(Raw("DELETE", target, token.Header(UnixNow() - 120, "DELETE", target, kHost)).status,
            401);
  EXPECT_EQ(Raw("DELETE", target, token.Header(UnixNow() + 120, "DELETE", target, kHost)).status,
            401);
  // Signed for another host.
  EXPECT_EQ(Signed("DELETE", target, "", "host-b").status, 401);
  // Signed for another path, method or query.
  EXPECT_EQ(
      Raw("DELETE", target, token.Header(UnixNow(), "DELETE", SandboxPath(Id(2)), kHost)).status,
      401);
  EXPECT_EQ(Raw("DELETE", target, token.Header(UnixNow(), "GET", target, kHost)).status, 401);
  EXPECT_EQ(Raw("DELETE", target + "?x=1", token.Header(UnixNow(), "DELETE", target, kHost)).status,
            401);
  EXPECT_EQ(fake_.seen, seen) << "the host saw a call that was not signed for it";

  // Through the client: another token, or another host's id, is unavailable naming the host.
  Status wrong_token = Remote(kHost, Token("another-fleet-token-0123456789abcdef"))->Kill(Id(1));
  EXPECT_EQ(wrong_token.code(), ErrorCode::kUnavailable);
  EXPECT_NE(wrong_token.message().find("fleet signature"), std::string::npos)
      << wrong_token.message();
  EXPECT_NE(wrong_token.message().find(kHost), std::string::npos);
  Status wrong_host = Remote("host-b", Token())->Kill(Id(1));
  EXPECT_EQ(wrong_host.code(), ErrorCode::kUnavailable);
  EXPECT_EQ(fake_.seen, seen);

  // And the real signature works.
  EXPECT_EQ(Signed("DELETE", target).status, 204);
  EXPECT_EQ(fake_.seen, seen + 1);
}

TEST_F(RemoteHostAgentTest, RefusesIdsThatAreNotIdsBeforeAnyCall) {
  for (const std::string& target : {
           std::string("/v1/sandboxes/ABCDEFGHIJKLMNOPQRST"),
           std::string("/v1/sandboxes/short"),
           std::string("/v1/sandboxes/") + std::string(21, 'a'),
           std::string("/v1/sandboxes/%2e%2e"),
           std::string("/v1/sandboxes/aaaaaaaaaaaaaaaaaaa%2f/pause"),
       }) {
    std::string method = target.ends_with("/pause") ? "POST" : "DELETE";
    Reply r = Signed(method, target);
    EXPECT_EQ(r.status, 400) << target;
    EXPECT_EQ(CodeOf(r), "invalid_argument") << target;
  }
  // Snapshot ids are "snap" + 16.
  EXPECT_EQ(Signed("DELETE", "/v1/snapshots/" + Id(1)).status, 400);
  // Ids in bodies.
  EXPECT_EQ(Signed("POST", "/v1/sandboxes", R"({"id":"NOPE","templateID":"base"})").status, 400);
  EXPECT_EQ(
      Signed("POST", "/v1/sandboxes", R"({"id":")" + Id(1) + R"(","templateID":"../x"})").status,
      400);
  EXPECT_EQ(Signed("POST", SandboxPath(Id(1)) + "/fork", R"({"childIDs":["x/y"]})").status, 400);
  EXPECT_EQ(Signed("POST", "/v1/sandboxes", "not json").status, 400);
  EXPECT_EQ(Signed("PUT", SandboxPath(Id(1)) + "/egress", "").status, 400);
  EXPECT_EQ(fake_.seen, 0);

  // The client refuses them too, without a request.
  EXPECT_EQ(remote_->Kill("../../etc").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(remote_->Fork(Id(1), {"BAD"}).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(remote_->DeleteSnapshot(Id(1)).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(remote_->Create({.id = Id(1), .template_id = "a/b"}).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(fake_.seen, 0);
}

TEST_F(RemoteHostAgentTest, RefusesBodiesOverTheLimit) {
  std::string big = R"({"childIDs":[")" + std::string(kAgentBodyLimit, 'a') + R"("]})";
  EXPECT_EQ(Signed("POST", SandboxPath(Id(1)) + "/fork", big).status, 413);
  EXPECT_EQ(fake_.seen, 0);
}

TEST_F(RemoteHostAgentTest, ReusesItsConnection) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(remote_->Probe(Id(1)).ok());
  ASSERT_TRUE(remote_->Pause(Id(1)).ok());
  EXPECT_EQ(server_->open_connections(), 1u);
}

TEST_F(RemoteHostAgentTest, AStoppedAgentIsUnavailablePromptlyNamingTheEndpoint) {
  ASSERT_TRUE(remote_->Create({.id = Id(1), .template_id = "base"}).ok());  // a pooled connection
  server_.reset();
  for (int i = 0; i < 2; ++i) {
    auto started = std::chrono::steady_clock::now();
    Status s = i == 0 ? remote_->Pause(Id(1)) : remote_->Inventory().status();
    auto took = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(s.code(), ErrorCode::kUnavailable) << s.ToString();
    EXPECT_NE(s.message().find(kHost), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(endpoint_), std::string::npos) << s.message();
    EXPECT_LT(took, std::chrono::seconds(3));
  }
}

TEST_F(RemoteHostAgentTest, AnAgentThatDoesNotAnswerTimesOut) {
  // Accepts, reads, never answers.
  test_support::LoopbackServer silent([](test_support::Conn& c) { c.ReadToEof(); });
  auto slow = RemoteHostAgent::ForEndpoint(
      kHost, "http://127.0.0.1:" + std::to_string(silent.port()), Token(),
      {.call_timeout = milliseconds(300), .slow_call_timeout = milliseconds(500)});
  ASSERT_TRUE(slow.ok());
  auto started = std::chrono::steady_clock::now();
  Status s = (*slow)->Kill(Id(1));
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_NE(s.message().find("no answer within 300 ms"), std::string::npos) << s.message();
  EXPECT_GE(took, milliseconds(250));
  EXPECT_LT(took, std::chrono::seconds(3));
  s = (*slow)->Pause(Id(1));
  EXPECT_NE(s.message().find("no answer within 500 ms"), std::string::npos) << s.message();
}

TEST_F(RemoteHostAgentTest, AnswersThatAreNotTheAgentsAreErrors) {
  // A proxy's error page in front of the agent, and a 200 that is not the API's JSON.
  test_support::LoopbackServer proxy([](test_support::Conn& c) {
    std::string head = c.ReadUntil("\r\n\r\n");
    bool inventory = head.find("/v1/inventory") != std::string::npos;
    std::string body = inventory ? "[1,2]" : "<html>bad gateway</html>";
    test_support::SendAll(c.fd.get(),
                          std::string(inventory ? "HTTP/1.1 200 OK" : "HTTP/1.1 502 X") +
                              "\r\nContent-Length: " + std::to_string(body.size()) +
                              "\r\nConnection: close\r\n\r\n" + body);
  });
  auto other = RemoteHostAgent::ForEndpoint(
      kHost, "http://127.0.0.1:" + std::to_string(proxy.port()), Token());
  ASSERT_TRUE(other.ok());
  Status s = (*other)->Kill(Id(1));
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_NE(s.message().find("502"), std::string::npos) << s.message();
  EXPECT_EQ((*other)->Inventory().status().code(), ErrorCode::kInternal);
}

TEST_F(RemoteHostAgentTest, PortsOfRemoteSandboxesAreNotResolvedHere) {
  EXPECT_EQ(remote_->ResolvePort(Id(1), 8080).status().code(), ErrorCode::kFailedPrecondition);
}

TEST_F(RemoteHostAgentTest, ServesEightThreadsAtOnce) {
  constexpr int kThreads = 8;
  constexpr int kRounds = 15;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        std::string id = Id(t * 1000 + r);
        auto fail = [&](const Status& s) {
          if (!s.ok()) {
            ++failures;
            ADD_FAILURE() << id << ": " << s.ToString();
          }
        };
        fail(remote_->Create({.id = id, .template_id = "base", .env_vars = {{"T", id}}}));
        auto probe = remote_->Probe(id);
        fail(probe.status());
        if (probe.ok() && probe->kind != HostSandboxStatus::Kind::kRunning) ++failures;
        fail(remote_->Pause(id));
        fail(remote_->Resume(id));
        fail(remote_->Usage(id).status());
        fail(remote_->Inventory().status());
        fail(remote_->Kill(id));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(fake_.CountCalls("create "), kThreads * kRounds);
  EXPECT_EQ(fake_.CountCalls("kill "), kThreads * kRounds);
  auto inv = remote_->Inventory();
  ASSERT_TRUE(inv.ok());
  EXPECT_TRUE(inv->running.empty());
  EXPECT_TRUE(inv->paused.empty());
  EXPECT_LE(server_->open_connections(), static_cast<size_t>(kThreads));
}

}  // namespace
}  // namespace moat::api::fleet

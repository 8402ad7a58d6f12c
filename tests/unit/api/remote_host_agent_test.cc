// RemoteHostAgent → a real AgentServer on 127.0.0.1:0 → FakeHostAgent: the HTTP form of
// HostAgent carries every call's values and errors both ways, and the agent refuses what is not
// signed for it before the host sees anything.
#include "api/fleet/remote_host_agent.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "api/fleet/agent_wire.h"
#include "common/fs.h"
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
  Status Resume(const std::string& id, const std::string& from_store = "") override {
    ++seen;
    return FakeHostAgent::Resume(id, from_store);
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
                        .vmm_start_time = 987654321,
                        .net_egress_bytes = (1ull << 33) + 7,
                        .net_ingress_bytes = 0xfffffffffffffffeull};
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
  EXPECT_EQ(u->net_egress_bytes, want.net_egress_bytes);
  EXPECT_EQ(u->net_ingress_bytes, want.net_ingress_bytes);
  EXPECT_EQ(remote_->Usage(Id(2)).status().code(), ErrorCode::kNotFound);
}

TEST(AgentWireUsage, NetworkCountersFromAnOlderAgentReadAsZeroAndBadOnesAreRefused) {
  json j = UsageToJson(HostSandboxUsage{.vcpus = 2, .net_egress_bytes = 5, .net_ingress_bytes = 6});
  ASSERT_EQ(j["netEgressBytes"], 5u);
  ASSERT_EQ(j["netIngressBytes"], 6u);
  json old = j;
  old.erase("netEgressBytes");
  old.erase("netIngressBytes");
  auto u = UsageFromJson(old);
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->vcpus, 2u);
  EXPECT_EQ(u->net_egress_bytes, 0u);
  EXPECT_EQ(u->net_ingress_bytes, 0u);
  for (const json& bad : {json(-1), json("12"), json(1.5), json(nullptr)}) {
    json k = j;
    k["netIngressBytes"] = bad;
    auto r = UsageFromJson(k);
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << bad.dump();
    EXPECT_NE(r.status().message().find("netIngressBytes"), std::string::npos)
        << r.status().ToString();
  }
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

// Template builds over the wire: RemoteHostAgent → AgentServer (with a files directory, so that
// it serves the build routes) → the fake's scripted BuildTemplate.
class RemoteBuildTest : public RemoteHostAgentTest {
 public:
  static HostTemplateBuild Build(const std::string& id,
                                 std::map<std::string, std::string> files = {}) {
    return {.build_id = id,
            .template_id = "tmpl1",
            .team_id = "team1",
            .start = json::object(),
            .vcpus = 2,
            .memory_mib = 1024,
            .files = std::move(files)};
  }

 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-remote-build.");
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    dir_ = *d;
    files_ = dir_ + "/files";
    auto server = host::AgentServer::Start(fake_, Token(), http::ServerOptions{}, nullptr, files_);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    endpoint_ = "http://127.0.0.1:" + std::to_string(server_->port());
    remote_ = Remote(kHost, Token());
  }
  void TearDown() override {
    remote_.reset();
    server_.reset();
    (void)RemoveTree(dir_);
  }

  // Runs `b` through remote_, keeping what it logs.
  Result<HostTemplateBuilt> Run(const HostTemplateBuild& b, std::string* step = nullptr) {
    std::string ignored;
    return remote_->BuildTemplate(
        b, [this](const HostBuildLog& l) { logged.push_back(l); },
        step != nullptr ? step : &ignored);
  }
  std::vector<std::string> PartFiles() {
    std::vector<std::string> parts;
    for (const auto& n : DirNames(files_ + "/team1")) {
      if (n.find(".part") != std::string::npos) parts.push_back(n);
    }
    return parts;
  }

  std::string dir_, files_;
  std::vector<HostBuildLog> logged;
};

// A 9 MiB file: two pieces (kTemplateFilePiece is 8 MiB, and the agent takes no bigger body).
std::string NineMiB() {
  std::string data(9 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7919) >> 8);
  return data;
}

TEST_F(RemoteBuildTest, FilesGoInPiecesOnlyWhereMissingAndTheBuildSucceeds) {
  static_assert(kTemplateFilePiece < (9 << 20));
  std::string hash(64, 'a'), src = dir_ + "/upload";
  std::string data = NineMiB();
  ASSERT_TRUE(WriteFileAtomic(src, data).ok());
  fake_.build_log = {{1, "info", "base", "pulling"}, {2, "info", "1", "RUN true"}};
  auto built = Run(Build("build1", {{hash, src}}));
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  EXPECT_EQ(built->disk_mib, fake_.build_result.disk_mib);
  EXPECT_EQ(built->result, fake_.build_result.result);
  // The file is on the agent whole, where the build was told it is; no piece is left over.
  auto there = ReadFile(files_ + "/team1/" + hash);
  ASSERT_TRUE(there.ok()) << there.status().ToString();
  EXPECT_TRUE(*there == data) << "the agent's copy differs (" << there->size() << " bytes)";
  EXPECT_TRUE(PartFiles().empty());
  ASSERT_EQ(fake_.builds_received.size(), 1u);
  EXPECT_EQ(fake_.builds_received[0].files.at(hash), files_ + "/team1/" + hash);
  EXPECT_EQ(fake_.builds_received[0].team_id, "team1");
  EXPECT_EQ(fake_.builds_received[0].vcpus, 2u);
  // The agent has it now: a second build sends nothing (the local file is not even opened).
  ASSERT_EQ(::unlink(src.c_str()), 0);
  built = Run(Build("build2", {{hash, src}}));
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  EXPECT_TRUE(*ReadFile(files_ + "/team1/" + hash) == data);
  // A file it lacks and cannot be read here fails the build before it starts.
  auto missing = Run(Build("build3", {{std::string(64, 'b'), dir_ + "/nothing"}}));
  EXPECT_FALSE(missing.ok());
  EXPECT_EQ(fake_.builds_received.size(), 2u);
}

TEST_F(RemoteBuildTest, UploadsOfOneFileAtOnceKeepTheirPiecesApart) {
  std::string hash(64, 'c');
  std::string target = TemplateFilePath("team1", hash);
  auto put = [&](const std::string& upload, int offset, bool last, const std::string& body) {
    std::string t = target + "?" + (upload.empty() ? "" : "upload=" + upload + "&") +
                    "offset=" + std::to_string(offset) + "&last=" + (last ? "1" : "0");
    return Signed("PUT", t, body);
  };
  // Two replicas interleave their pieces: each upload writes its own part file.
  EXPECT_EQ(put("uploada1", 0, false, "aaaa").status, 204);
  EXPECT_EQ(put("uploadb2", 0, false, "bbbb").status, 204);
  EXPECT_EQ(PartFiles().size(), 2u);
  EXPECT_EQ(put("uploada1", 4, true, "AAAA").status, 204);
  EXPECT_EQ(*ReadFile(files_ + "/team1/" + hash), "aaaaAAAA");
  EXPECT_EQ(put("uploadb2", 4, true, "BBBB").status, 204);
  EXPECT_EQ(*ReadFile(files_ + "/team1/" + hash), "bbbbBBBB") << "the last to end wins";
  EXPECT_TRUE(PartFiles().empty());
  // A piece out of place, and uploads without a valid token, are refused.
  EXPECT_EQ(put("uploadc3", 4, false, "xx").status, 409);
  for (const std::string& bad :
       std::vector<std::string>{"", "short", "UPPERCASE1", "dots.and.more", std::string(65, 'a')}) {
    auto r = put(bad, 0, true, "x");
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_EQ(CodeOf(r), "invalid_argument") << bad;
  }
}

TEST_F(RemoteBuildTest, AStartingUploadRemovesPartsLeftOverAnHourAgo) {
  ASSERT_TRUE(MakeDirs(files_ + "/team1").ok());
  std::string stale = files_ + "/team1/." + std::string(64, 'd') + ".deadbeef1.part";
  std::string fresh = files_ + "/team1/." + std::string(64, 'd') + ".inflight2.part";
  std::string other = files_ + "/team1/" + std::string(64, 'e');
  for (const auto& f : {stale, fresh, other}) ASSERT_TRUE(WriteFileAtomic(f, "x").ok());
  timespec old[2] = {{::time(nullptr) - 7200, 0}, {::time(nullptr) - 7200, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, stale.c_str(), old, 0), 0);
  ASSERT_EQ(::utimensat(AT_FDCWD, other.c_str(), old, 0), 0);
  std::string target = TemplateFilePath("team1", std::string(64, 'f'));
  EXPECT_EQ(Signed("PUT", target + "?upload=newupload3&offset=0&last=1", "y").status, 204);
  EXPECT_FALSE(PathExists(stale));
  EXPECT_TRUE(PathExists(fresh));
  EXPECT_TRUE(PathExists(other)) << "finished uploads are not parts";
}

TEST_F(RemoteBuildTest, LogsArriveWholeAndInOrder) {
  // More lines than one poll answers (500), and lines large enough to fill an answer's bytes.
  for (int i = 0; i < 1200; ++i) {
    fake_.build_log.push_back({1000 + i, i % 7 == 0 ? "warn" : "info", std::to_string(i / 100),
                               "line " + std::to_string(i)});
  }
  for (int i = 0; i < 40; ++i) {
    fake_.build_log.push_back(
        {5000 + i, "info", "big", std::string(8000, static_cast<char>('a' + i % 26))});
  }
  auto built = Run(Build("build1"));
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  ASSERT_EQ(logged.size(), fake_.build_log.size());
  for (size_t i = 0; i < logged.size(); ++i) {
    EXPECT_EQ(logged[i].unix_ms, fake_.build_log[i].unix_ms) << i;
    EXPECT_EQ(logged[i].level, fake_.build_log[i].level) << i;
    EXPECT_EQ(logged[i].step, fake_.build_log[i].step) << i;
    EXPECT_EQ(logged[i].message, fake_.build_log[i].message) << i;
  }
}

TEST_F(RemoteBuildTest, AFailureCarriesItsCodeMessageAndStep) {
  fake_.build_log = {{1, "info", "2", "RUN false"}, {2, "error", "2", "exited with status 1"}};
  fake_.build_failure = FailedPrecondition("step 2: exited with status 1");
  fake_.build_failed_step = "2";
  std::string step;
  auto built = Run(Build("build1"), &step);
  ASSERT_FALSE(built.ok());
  EXPECT_EQ(built.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(built.status().message(), "step 2: exited with status 1");
  EXPECT_EQ(step, "2");
  ASSERT_EQ(logged.size(), 2u);
  EXPECT_EQ(logged[1].level, "error");
  // Failing on entry: step "base".
  fake_.fail_next["build"] = Unavailable("no room");
  built = Run(Build("build2"), &step);
  EXPECT_EQ(built.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(step, "base");
}

TEST_F(RemoteBuildTest, TheAgentCapsABuildsLog) {
  constexpr int kCap = 50000;
  fake_.build_log.push_back({0, "info", "1", std::string(20000, 'x')});
  for (int i = 1; i < kCap + 10; ++i) fake_.build_log.push_back({i, "info", "1", "y"});
  fake_.build_log.push_back({kCap + 10, "error", "1", "moat: the step failed"});
  fake_.build_log.push_back({kCap + 11, "info", "1", "dropped"});
  auto built = Run(Build("build1"));
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  // kCap lines, the one warning, then only errors.
  ASSERT_EQ(logged.size(), static_cast<size_t>(kCap + 2));
  EXPECT_EQ(logged[0].message, std::string(8192, 'x') + "…") << "a line is cut at 8 KiB";
  EXPECT_EQ(logged[kCap - 1].unix_ms, kCap - 1);
  EXPECT_EQ(logged[kCap].level, "warn");
  EXPECT_NE(logged[kCap].message.find("50000 lines"), std::string::npos) << logged[kCap].message;
  EXPECT_EQ(logged[kCap + 1].level, "error");
  EXPECT_EQ(logged[kCap + 1].message, "moat: the step failed");
}

TEST_F(RemoteBuildTest, ABuildTheAgentDoesNotKnowIsAnError) {
  auto r = Signed("GET", "/v1/templates/builds/nosuchbuild?offset=0");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(CodeOf(r), "not_found");
  // Starting one twice is refused; asking for lines past its end gives none.
  fake_.build_log = {{1, "info", "1", "one"}};
  ASSERT_TRUE(Run(Build("build1")).ok());
  r = Signed("POST", "/v1/templates/builds", DumpJson(BuildToJson(Build("build1"))));
  EXPECT_EQ(r.status, 409) << r.body;
  r = Signed("GET", "/v1/templates/builds/build1?offset=99");
  ASSERT_EQ(r.status, 200);
  json j = json::parse(r.body);
  EXPECT_EQ(j["status"], "ready");
  EXPECT_TRUE(j["logs"].empty());
}

// An agent on the wire that accepts every build and answers each poll with `progress`.
class ScriptedAgent {
 public:
  explicit ScriptedAgent(std::function<std::pair<int, std::string>()> progress)
      : server_([progress](test_support::Conn& c) {
          for (;;) {
            std::string raw = c.ReadUntil("\r\n\r\n");
            if (raw.empty()) return;
            auto head = test_support::ParseHead(raw);
            std::string body;
            size_t len = std::strtoul(head.Header("content-length").c_str(), nullptr, 10);
            if (len > 0 && !c.ReadN(len, &body)) return;
            auto [status, out] = head.first_line.rfind("POST", 0) == 0
                                     ? std::pair<int, std::string>{202, "{}"}
                                     : progress();
            std::string reply = "HTTP/1.1 " + std::to_string(status) +
                                " X\r\nContent-Type: application/json\r\nContent-Length: " +
                                std::to_string(out.size()) + "\r\n\r\n" + out;
            if (!test_support::SendAll(c.fd.get(), reply)) return;
          }
        }) {}
  std::unique_ptr<RemoteHostAgent> Remote(RemoteHostAgentOptions options = {}) {
    auto r = RemoteHostAgent::ForEndpoint(
        kHost, "http://127.0.0.1:" + std::to_string(server_.port()), Token(), options);
    EXPECT_TRUE(r.ok());
    return std::move(r).value();
  }

 private:
  test_support::LoopbackServer server_;
};

Result<HostTemplateBuilt> BuildOn(RemoteHostAgent& agent) {
  std::string step;
  return agent.BuildTemplate(RemoteBuildTest::Build("build1"), nullptr, &step);
}

TEST(RemoteBuild, AnAgentThatForgotTheBuildLosesIt) {
  ScriptedAgent agent([] {
    return std::pair<int, std::string>{404, R"({"code":"not_found","message":"no build"})"};
  });
  auto r = BuildOn(*agent.Remote());
  EXPECT_EQ(r.status().code(), ErrorCode::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("lost build build1"), std::string::npos)
      << r.status().ToString();
}

TEST(RemoteBuild, ReadyWithoutAResultOrAnUnknownStateIsAnErrorNamingTheHost) {
  for (std::string status : {"ready", "paused"}) {
    ScriptedAgent agent([status] {
      return std::pair<int, std::string>{
          200, json{{"status", status}, {"logs", json::array()}, {"next", 0}}.dump()};
    });
    auto started = std::chrono::steady_clock::now();
    auto r = BuildOn(*agent.Remote());
    EXPECT_EQ(r.status().code(), ErrorCode::kInternal) << status << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(kHost), std::string::npos) << r.status().ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  }
}

TEST(RemoteBuild, ABuildThatNeverEndsIsGivenUpOn) {
  std::atomic<int> polls{0};
  ScriptedAgent agent([&polls] {
    ++polls;
    return std::pair<int, std::string>{
        200, json{{"status", "building"}, {"logs", json::array()}, {"next", 0}}.dump()};
  });
  auto started = std::chrono::steady_clock::now();
  auto r = BuildOn(
      *agent.Remote({.build_timeout = milliseconds(400), .build_poll_interval = milliseconds(20)}));
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(r.status().code(), ErrorCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_NE(r.status().message().find("did not end"), std::string::npos) << r.status().ToString();
  EXPECT_GE(took, milliseconds(400));
  EXPECT_LT(took, std::chrono::seconds(5));
  EXPECT_GT(polls, 3);
}

}  // namespace
}  // namespace moat::api::fleet

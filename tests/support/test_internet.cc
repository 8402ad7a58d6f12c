#include "support/test_internet.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "common/fs.h"
#include "net/net_tools.h"

namespace moat::test_support {
namespace {

using std::chrono::seconds;

Result<std::string> Sh(const std::string& cmd) {
  return net::RunTool({"sh", "-c", cmd}, {}, -1, seconds(20));
}

// The stand-in resolver: answers every datagram on port 53.
constexpr char kUdpEcho[] = R"(import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.1", 53))
while True:
    d, a = s.recvfrom(512)
    s.sendto(b"answer:" + d, a)
)";

}  // namespace

const char kProbeScript[] = R"(import json, socket, sys, urllib.request
out = {}
for u in sys.argv[1:]:
    try:
        if u.startswith("dns:"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.connect((u[4:], 53))
            s.send(b"query")
            out[u] = "ok:" + s.recv(64).decode(errors="replace")
            continue
        with urllib.request.urlopen(u, timeout=3) as r:
            out[u] = "ok:" + r.read(64).decode(errors="replace").strip()
    except Exception as e:
        out[u] = "err:" + str(getattr(e, "reason", e))
print(json.dumps(out))
)";

bool Denied(const std::string& result) {
  return result.rfind("err:", 0) == 0 && result.find("No route to host") != std::string::npos;
}

std::string MoatNetworkObjects() {
  auto left =
      Sh("echo $(ip netns list | grep -c moat) $(ip link | grep -c moat) "
         "$(nft list tables | grep -c moat)");
  return left.ok() ? left->substr(0, left->find('\n')) : "?";
}

int SlotObjects(const net::Ipv4Cidr& pool) {
  uint32_t a = pool.address.value;
  std::string dotted = std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
                       std::to_string((a >> 8) & 255) + ".";
  char hex[16];
  std::snprintf(hex, sizeof hex, "%06x", a >> 8);
  auto r = Sh("echo $(( $(ip netns list | grep -c 'moat-" + dotted +
              "') + $(ip -o link | grep -c 'moat" + hex + "') ))");
  return r.ok() ? std::atoi(r->c_str()) : -1;
}

Result<std::unique_ptr<TestInternet>> TestInternet::Start(const std::string& dir,
                                                          const net::NetConfig& config) {
  std::unique_ptr<TestInternet> t(new TestInternet());
  t->tag_ = std::to_string(::getpid());
  t->ns_ = "moat-test-inet-" + t->tag_;
  t->link_ = "moatin" + std::to_string(::getpid() % 10000000) + "h";
  t->dir_ = dir;
  t->stopped_ = false;
  // The safety net: whatever the code under test lets out of a slot of this pool goes only to
  // the test's internet ranges or other slots.
  std::string pool = config.pool.ToString();
  std::string guard = "table ip moat_test_guard_" + t->tag_ +
                      " {\n chain forward {\n  type filter hook forward priority -300; policy "
                      "accept;\n  iifgroup " +
                      std::to_string(config.link_group) + " ip saddr " + pool +
                      " ip daddr != { 198.51.100.0/24, 203.0.113.0/24, " + pool +
                      " } drop\n }\n}\n";
  MOAT_RETURN_IF_ERROR(net::RunTool({"nft", "-f", "-"}, guard).status().Annotate("guard table"));
  std::string setup =
      "ip netns add " + t->ns_ + " && ip link add " + t->link_ +
      " type veth peer name eth0 netns " + t->ns_ + " && ip addr add " + kHostAddress + "/24 dev " +
      t->link_ + " && ip link set " + t->link_ + " up && echo 1 > /proc/sys/net/ipv4/conf/" +
      t->link_ + "/forwarding && ip route add 203.0.113.0/24 via 198.51.100.1 dev " + t->link_ +
      " && ip -n " + t->ns_ + " link set lo up && ip -n " + t->ns_ +
      " addr add 198.51.100.1/24 dev eth0 && ip -n " + t->ns_ +
      " addr add 203.0.113.1/24 dev eth0 && ip -n " + t->ns_ + " link set eth0 up && mkdir -p " +
      dir + "/www " + dir + "/hostwww && echo internet > " + dir +
      "/www/index.html && echo host > " + dir + "/hostwww/index.html";
  MOAT_RETURN_IF_ERROR(Sh(setup).status().Annotate("internet namespace"));
  auto serve = [&](std::vector<std::string> argv) -> Status {
    SpawnOptions o;
    o.argv = std::move(argv);
    MOAT_ASSIGN_OR_RETURN(ChildProcess c, ChildProcess::Spawn(o));
    t->servers_.push_back(std::move(c));
    return Status::Ok();
  };
  for (const char* port : {"8000", "3000"}) {
    MOAT_RETURN_IF_ERROR(serve({"ip", "netns", "exec", t->ns_, "python3", "-m", "http.server", port,
                                "--bind", "0.0.0.0", "--directory", dir + "/www"}));
  }
  MOAT_RETURN_IF_ERROR(serve({"ip", "netns", "exec", t->ns_, "python3", "-c", kUdpEcho}));
  MOAT_RETURN_IF_ERROR(serve({"python3", "-m", "http.server", "8001", "--bind", kHostAddress,
                              "--directory", dir + "/hostwww"}));
  // Up when the host's own server answers.
  for (int i = 0; i < 100; ++i) {
    auto r = Sh("curl -s --max-time 1 " + t->HostUrl() + " || true");
    if (r.ok() && r->find("host") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return t;
}

std::string TestInternet::HostUrl() const {
  return std::string("http://") + kHostAddress + ":8001/";
}

void TestInternet::Stop() {
  if (stopped_) return;
  stopped_ = true;
  servers_.clear();  // kills the servers
  (void)Sh("ip link del " + link_ + " 2>/dev/null; ip netns del " + ns_ +
           " 2>/dev/null; nft delete table ip moat_test_guard_" + tag_ + " 2>/dev/null; rm -rf " +
           dir_ + "/www " + dir_ + "/hostwww; true");
}

TestInternet::~TestInternet() {
  Stop();
}

}  // namespace moat::test_support

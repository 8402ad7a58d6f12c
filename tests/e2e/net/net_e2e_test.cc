// Boots real microVMs (TCG, jailed) with network slots and checks egress from inside the guest.
// An "internet" namespace made by the test, with HTTP servers on 198.51.100.1 and 203.0.113.1
// (documentation ranges), stands in for the outside world. Traffic goes only to loopback and
// namespaces this test creates: a guard table of the test's own drops anything the test's
// slots forward to any other destination, so even a broken policy cannot reach the real
// uplink (and shows up as a timeout instead of the expected rejection). Every request is
// bounded in count and time.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "channel/guest_client.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/socket.h"
#include "net/net_tools.h"
#include "net/network_slot.h"
#include "net/nft_ruleset.h"
#include "support/test_internet.h"
#include "support/test_util.h"
#include "vmm/qemu/qemu_driver.h"

namespace moat::net {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

using test_support::Denied;
using test_support::TestInternet;
const std::string kInternet = TestInternet::kInternet;
const std::string kInternet2 = TestInternet::kInternet2;
const std::string kControlPlane = TestInternet::kControlPlane;
const std::string kMetadata = TestInternet::kMetadata;
const std::string kDns = TestInternet::kDnsProbe;

Result<std::string> Sh(const std::string& cmd) {
  return RunTool({"sh", "-c", cmd}, {}, -1, seconds(20));
}

std::string OrEmpty(const Result<std::string>& r) {
  return r.ok() ? r.value() : "";
}

void PutMac(std::string& frame, const char* mac) {
  unsigned b[6];
  ASSERT_EQ(std::sscanf(mac, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]), 6);
  for (unsigned byte : b) frame.push_back(static_cast<char>(byte));
}

void Put16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v >> 8));
  s.push_back(static_cast<char>(v & 0xff));
}

// What the guest would put on its link: an Ethernet frame from its MAC and address to the
// gateway, carrying IPv4/UDP to dst:port (UDP checksum 0: none, which IPv4 allows).
std::string GuestUdpFrame(const std::string& dst, uint16_t sport, uint16_t dport,
                          const std::string& payload) {
  std::string f;
  PutMac(f, kGatewayMac);
  PutMac(f, kGuestMac);
  Put16(f, 0x0800);
  std::string ip;
  ip.push_back(0x45);
  ip.push_back(0);
  Put16(ip, static_cast<uint16_t>(20 + 8 + payload.size()));
  Put16(ip, 0x1234);  // id
  Put16(ip, 0x4000);  // DF
  ip.push_back(64);   // TTL
  ip.push_back(17);   // UDP
  Put16(ip, 0);       // checksum, below
  in_addr src{}, dest{};
  ::inet_pton(AF_INET, kGuestAddress, &src);
  ::inet_pton(AF_INET, dst.c_str(), &dest);
  ip.append(reinterpret_cast<const char*>(&src), 4);  // network order already
  ip.append(reinterpret_cast<const char*>(&dest), 4);
  uint32_t sum = 0;
  for (size_t i = 0; i < 20; i += 2) {
    sum += (static_cast<uint8_t>(ip[i]) << 8) | static_cast<uint8_t>(ip[i + 1]);
  }
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  ip[10] = static_cast<char>((~sum >> 8) & 0xff);
  ip[11] = static_cast<char>(~sum & 0xff);
  Put16(ip, sport);
  Put16(ip, dport);
  Put16(ip, static_cast<uint16_t>(8 + payload.size()));
  Put16(ip, 0);
  return f + ip + payload;
}

// Reads what the slot sends the guest on its tap for `wait`, or until `want` IPv4 packets came:
// how many, and their IP lengths together (what the slot's counters count).
std::pair<int, uint64_t> DrainTap(int tap_fd, int want, milliseconds wait) {
  int packets = 0;
  uint64_t bytes = 0;
  auto deadline = Clock::now() + wait;
  while (packets < want && Clock::now() < deadline) {
    pollfd p{tap_fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[2048];
    ssize_t n = ::read(tap_fd, buf, sizeof buf);
    if (n < 34 || buf[12] != 0x08 || buf[13] != 0x00) continue;  // not IPv4 (IPv6, ARP)
    ++packets;
    bytes += (static_cast<uint8_t>(buf[16]) << 8) | static_cast<uint8_t>(buf[17]);
  }
  return {packets, bytes};
}

// One VM with its slot, directory and guest channel.
struct Vm {
  std::string dir;
  std::unique_ptr<NetworkSlot> slot;
  std::unique_ptr<vmm::qemu::QemuDriver> driver;
  std::unique_ptr<channel::GuestClient> guest;
  vmm::VmSpec spec;
};

class NetE2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u);
    std::string guest = test_support::BuildDir() + "/guest";
    kernel_ = guest + "/vmlinux";
    rootfs_ = guest + "/rootfs.ext4";
    ASSERT_TRUE(PathExists(kernel_) && PathExists(rootfs_))
        << "guest artifacts missing in " << guest;
    auto base = MakeTempDir("/dev/shm", "moat-net-e2e.");
    ASSERT_TRUE(base.ok());
    base_ = *base;
    ::chmod(base_.c_str(), 0755);
    tag_ = std::to_string(::getpid());
    config_.pool = *Ipv4Cidr::Parse("10.223." + std::to_string(::getpid() % 250) + ".0/24");
    config_.state_dir = base_ + "/slots";
    config_.dns_servers = {*Ipv4Address::Parse(TestInternet::kResolver)};
    auto host = HostNetwork::Create(config_);
    ASSERT_TRUE(host.ok()) << host.status().ToString();
    host_ = std::move(*host).release();
    auto inet = TestInternet::Start(base_, config_);
    ASSERT_TRUE(inet.ok()) << inet.status().ToString();
    internet_ = inet->release();
  }

  static void TearDownTestSuite() {
    delete internet_;
    internet_ = nullptr;
    delete host_;
    host_ = nullptr;
    (void)RemoveTree(base_);
    std::printf("moat namespaces, links, nft tables left on the machine: %s\n",
                test_support::MoatNetworkObjects().c_str());
  }

  // Cold boot (memory shared, so that it can become a snapshot) or restore of `from`.
  static std::unique_ptr<Vm> StartVm(const std::string& name, uid_t uid, const Vm* from = nullptr,
                                     const std::string& vmstate = "") {
    auto vm = std::make_unique<Vm>();
    vm->dir = base_ + "/" + name;
    EXPECT_TRUE(MakeDirs(vm->dir, 0755).ok());
    auto slot = host_->CreateSlot();
    EXPECT_TRUE(slot.ok()) << slot.status().ToString();
    if (!slot.ok()) return nullptr;
    vm->slot = std::move(*slot);
    vmm::VmSpec& s = vm->spec;
    s.name = "net-e2e-" + tag_ + "-" + name;
    s.vcpus = 1;
    s.memory_mib = 256;
    s.accel = vmm::Accel::kTcg;
    s.rootfs.path = rootfs_;
    s.rootfs.overlay_path = vm->dir + "/overlay.qcow2";
    if (from == nullptr) {
      s.kernel_path = kernel_;
      s.memory_path = vm->dir + "/mem";
      s.memory_shared = true;
      EXPECT_TRUE(
          Sh("qemu-img create -q -f qcow2 -F raw -b " + rootfs_ + " " + s.rootfs.overlay_path)
              .ok());
    } else {
      // The clone's disk is a copy of the paused template's overlay: disk and page cache agree.
      s.boot_mode = vmm::BootMode::kRestore;
      s.memory_path = from->spec.memory_path;
      s.memory_shared = false;
      s.device_state_path = vmstate;
      EXPECT_TRUE(Sh("cp " + from->spec.rootfs.overlay_path + " " + s.rootfs.overlay_path).ok());
    }
    s.console_log_path = vm->dir + "/console.log";
    s.guest_socket_path = vm->dir + "/guest.sock";
    s.qmp_socket_path = vm->dir + "/qmp.sock";
    s.vmm_log_path = vm->dir + "/vmm.log";
    s.net = vmm::NetDeviceSpec{.tap_fd = vm->slot->tap_fd(), .mac = NetworkSlot::guest_mac()};
    vmm::JailSpec j;
    j.uid = uid;
    j.gid = kGid;  // shared: clones open the template's memory file through it
    s.jail = j;
    vm->driver = std::make_unique<vmm::qemu::QemuDriver>();
    Status started = vm->driver->Start(s);
    EXPECT_TRUE(started.ok()) << started.ToString();
    if (!started.ok()) return nullptr;
    if (from != nullptr) {
      EXPECT_TRUE(vm->driver->Resume().ok());
    }
    auto fd = ConnectUnix(s.guest_socket_path, seconds(10));
    EXPECT_TRUE(fd.ok()) << fd.status().ToString();
    if (!fd.ok()) return nullptr;
    auto client = channel::GuestClient::Connect(std::move(*fd), seconds(90));
    EXPECT_TRUE(client.ok()) << client.status().ToString() << "\n"
                             << OrEmpty(ReadFile(s.console_log_path));
    if (!client.ok()) return nullptr;
    vm->guest = std::move(*client);
    // What the agent does after every boot, restore and fork.
    auto net = vm->guest->Call(vm->slot->GuestConfig(), Clock::now() + seconds(10));
    EXPECT_TRUE(net.ok()) << net.status().ToString();
    return vm;
  }

  static json Probe(Vm& vm, const std::vector<std::string>& urls) {
    channel::ExecRequest req;
    req.argv = {"python3", "-c", test_support::kProbeScript};
    req.argv.insert(req.argv.end(), urls.begin(), urls.end());
    req.timeout_ms = 60000;
    auto r = vm.guest->Run(req, Clock::now() + seconds(70));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return json::object();
    EXPECT_EQ(r->exit_code, 0) << r->stderr_data;
    json j = json::parse(r->stdout_data, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r->stdout_data << r->stderr_data;
    std::printf("probe from %s: %s\n", vm.slot->netns_name().c_str(), j.dump().c_str());
    return j.is_object() ? j : json::object();
  }

  static void Apply(Vm& vm, const json& network, std::optional<bool> internet) {
    auto p = EgressPolicy::FromE2b(network, internet);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    Status s = vm.slot->ApplyPolicy(*p);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  static constexpr gid_t kGid = 930000;
  static inline std::string kernel_, rootfs_, base_, tag_;
  static inline NetConfig config_;
  static inline HostNetwork* host_ = nullptr;
  static inline TestInternet* internet_ = nullptr;
};

TEST_F(NetE2e, EgressPolicyIsolationAndRestoreIntoAnotherSlot) {
  uid_t uid = 930000 + static_cast<uid_t>(::getpid() % 1000) * 8;
  auto a = StartVm("a", uid + 1);
  ASSERT_TRUE(a != nullptr);
  auto b = StartVm("b", uid + 2);
  ASSERT_TRUE(b != nullptr);
  std::printf("slot a: %s (%s), slot b: %s (%s)\n", a->slot->netns_name().c_str(),
              a->slot->slot_address().ToString().c_str(), b->slot->netns_name().c_str(),
              b->slot->slot_address().ToString().c_str());

  // The guest's side: eth0 has the fixed address, the route and resolv.conf.
  channel::ExecRequest show;
  show.cmd =
      "cat /sys/class/net/eth0/address; cat /proc/net/route | tail -n +2; cat /etc/resolv.conf";
  auto shown = a->guest->Run(show, Clock::now() + seconds(30));
  ASSERT_TRUE(shown.ok());
  EXPECT_NE(shown->stdout_data.find(kGuestMac), std::string::npos) << shown->stdout_data;
  EXPECT_NE(shown->stdout_data.find("eth0\t00000000\t1600FEA9"),
            std::string::npos)  // default via .22
      << shown->stdout_data;
  EXPECT_NE(shown->stdout_data.find("nameserver 169.254.0.22"), std::string::npos)
      << shown->stdout_data;

  // Sandbox b serves HTTP on 8080; the host (moatd's port proxy) reaches it at b's slot address.
  auto server = b->guest->Open({{"op", "exec"},
                                {"cmd",
                                 "mkdir -p /tmp/www && echo sandbox-b > /tmp/www/index.html && "
                                 "exec python3 -m http.server 8080 --directory /tmp/www"},
                                {"tag", "www"}});
  ASSERT_TRUE(server.ok());
  std::string b_url = "http://" + b->slot->slot_address().ToString() + ":8080/";
  std::string fetched;
  for (int i = 0; i < 60 && fetched.find("sandbox-b") == std::string::npos; ++i) {
    fetched = OrEmpty(Sh("curl -s --max-time 2 " + b_url + " || true"));
    if (fetched.find("sandbox-b") == std::string::npos)
      std::this_thread::sleep_for(milliseconds(500));
  }
  ASSERT_NE(fetched.find("sandbox-b"), std::string::npos) << "host could not reach sandbox b";
  // The host's test address answers the host itself.
  std::string host_url = internet_->HostUrl();
  ASSERT_NE(OrEmpty(Sh("curl -s --max-time 2 " + host_url)).find("host"), std::string::npos);

  std::string gateway_url = "http://" + a->slot->addresses().host_address.ToString() + ":8001/";
  // --- Default policy: the internet yes; host, neighbours, metadata, control plane no. -------
  json p = Probe(
      *a, {kInternet, kInternet2, kControlPlane, host_url, gateway_url, b_url, kMetadata, kDns});
  EXPECT_EQ(p[kInternet], "ok:internet");
  EXPECT_EQ(p[kDns], "ok:answer:query");  // DNS to the gateway reaches the configured resolver
  EXPECT_EQ(p[kInternet2], "ok:internet");
  for (const auto& u : {kControlPlane, host_url, gateway_url, b_url, kMetadata}) {
    EXPECT_TRUE(Denied(p.value(u, ""))) << u << " -> " << p.value(u, "");
  }
  // --- allow_internet_access: false -----------------------------------------------------
  Apply(*a, nullptr, false);
  p = Probe(*a, {kInternet, kInternet2, kDns});
  EXPECT_TRUE(Denied(p.value(kInternet, ""))) << p.dump();
  EXPECT_TRUE(Denied(p.value(kDns, ""))) << p.dump();  // no egress at all: no DNS either
  EXPECT_TRUE(Denied(p.value(kInternet2, ""))) << p.dump();
  // --- denyOut one CIDR, internet on ------------------------------------------------------
  Apply(*a, {{"denyOut", {"203.0.113.0/24"}}}, true);
  p = Probe(*a, {kInternet, kInternet2});
  EXPECT_EQ(p[kInternet], "ok:internet");
  EXPECT_TRUE(Denied(p.value(kInternet2, ""))) << p.dump();
  // --- internet off, one address allowed (allowOut wins) ----------------------------------
  Apply(*a, {{"allowOut", {"198.51.100.1"}}, {"denyOut", {"0.0.0.0/0"}}}, false);
  p = Probe(*a, {kInternet, kInternet2, host_url});
  EXPECT_EQ(p[kInternet], "ok:internet");
  EXPECT_TRUE(Denied(p.value(kInternet2, ""))) << p.dump();
  EXPECT_TRUE(Denied(p.value(host_url, ""))) << p.dump();
  // --- back to the default: reachable again -----------------------------------------------
  Apply(*a, nullptr, true);
  p = Probe(*a, {kInternet, kInternet2});
  EXPECT_EQ(p[kInternet], "ok:internet");
  EXPECT_EQ(p[kInternet2], "ok:internet");

  // --- Snapshot a and restore it into a new slot: same MAC and address, working network. ---
  std::string vmstate = a->dir + "/vmstate";
  a->guest.reset();
  Status saved = a->driver->SaveDeviceState(vmstate, /*durable=*/true);
  ASSERT_TRUE(saved.ok()) << saved.ToString();
  auto c = StartVm("c", uid + 3, a.get(), vmstate);
  ASSERT_TRUE(c != nullptr);
  EXPECT_NE(c->slot->netns_name(), a->slot->netns_name());
  p = Probe(*c, {kInternet, b_url});
  EXPECT_EQ(p[kInternet], "ok:internet");
  EXPECT_TRUE(Denied(p.value(b_url, ""))) << p.dump();
  // Only the restored clone's slot is used: the template's VM is paused.
  auto q = a->driver->QueryStatus();
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->state, vmm::VmState::kPaused);

  // --- Teardown: VMMs first, then their slots; nothing of them remains. --------------------
  server->reset();
  std::vector<std::string> names;
  for (auto* vm : {&a, &b, &c}) {
    (*vm)->guest.reset();
    (*vm)->driver->Kill();
    names.push_back((*vm)->slot->addresses().host_link);
    names.push_back((*vm)->slot->netns_name());
    Status released = (*vm)->slot->Release();
    EXPECT_TRUE(released.ok()) << released.ToString();
  }
  for (const auto& n : names) {
    EXPECT_FALSE(PathExists("/sys/class/net/" + n) || PathExists(NetnsPath(n))) << n;
  }
  EXPECT_EQ(host_->slots_in_use(), 0u);
}

// Usage metering without a VM: the test plays the guest on the slot's tap. What leaves the slot
// counts as egress once it passed the policy, what the slot sends the guest as ingress, and an
// egress policy update resets neither.
TEST_F(NetE2e, SlotCountsTheGuestsBytesEachWayOnceAndKeepsThemAcrossPolicyChanges) {
  auto created = host_->CreateSlot();
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  std::unique_ptr<NetworkSlot> slot = std::move(*created);
  const int tap = slot->tap_fd();
  // The guest's ARP answer, so that what the slot sends it reaches the tap.
  ASSERT_TRUE(Sh("ip -n " + slot->netns_name() + " neigh replace " + kGuestAddress + " lladdr " +
                 kGuestMac + " dev " + kTapName + " nud permanent")
                  .ok());
  auto before = slot->ReadCounters();
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  std::printf("counters at set-up: egress %llu, ingress %llu\n",
              static_cast<unsigned long long>(before->egress_bytes),
              static_cast<unsigned long long>(before->ingress_bytes));

  // Denied (the metadata address): rejected in the egress chain, so not egress; the rejections
  // the slot sends back are ingress.
  constexpr int kDenied = 3;
  for (int i = 0; i < kDenied; ++i) {
    std::string f = GuestUdpFrame("169.254.169.254", 41000 + i, 80, std::string(100, 'd'));
    ASSERT_EQ(::write(tap, f.data(), f.size()), static_cast<ssize_t>(f.size()));
  }
  auto [rejections, rejection_bytes] = DrainTap(tap, kDenied, seconds(5));
  EXPECT_EQ(rejections, kDenied);
  auto denied = slot->ReadCounters();
  ASSERT_TRUE(denied.ok()) << denied.status().ToString();
  EXPECT_EQ(denied->egress_bytes, before->egress_bytes);
  EXPECT_GE(denied->ingress_bytes - before->ingress_bytes, rejection_bytes);

  // Allowed: datagrams to the test resolver, which echoes each ("answer:" + it).
  constexpr int kSent = 5;
  const std::string payload(300, 'x');  // not a DNS query: echoed
  uint64_t sent_bytes = 0;
  for (int i = 0; i < kSent; ++i) {
    std::string f = GuestUdpFrame(TestInternet::kResolver, 42000 + i, 53, payload);
    ASSERT_EQ(::write(tap, f.data(), f.size()), static_cast<ssize_t>(f.size()));
    sent_bytes += f.size() - 14;  // the IP packet
  }
  auto [answers, answer_bytes] = DrainTap(tap, kSent, seconds(5));
  EXPECT_EQ(answers, kSent);
  EXPECT_GE(answer_bytes, static_cast<uint64_t>(kSent) * (20 + 8 + 7 + payload.size()));
  auto after = slot->ReadCounters();
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  std::printf("sent %llu bytes, got %llu; counters: egress %llu, ingress %llu\n",
              static_cast<unsigned long long>(sent_bytes),
              static_cast<unsigned long long>(answer_bytes),
              static_cast<unsigned long long>(after->egress_bytes),
              static_cast<unsigned long long>(after->ingress_bytes));
  EXPECT_GE(after->egress_bytes - denied->egress_bytes, sent_bytes);
  EXPECT_GE(after->ingress_bytes - denied->ingress_bytes, answer_bytes);
  // Once per packet: nothing else goes through a quiet slot.
  EXPECT_LT(after->egress_bytes - denied->egress_bytes, 2 * sent_bytes);
  EXPECT_LT(after->ingress_bytes - denied->ingress_bytes, 2 * answer_bytes);

  // What the slot itself sends out on the guest's behalf (the domain proxy's connections) is
  // egress too; its answer goes to the slot, not the guest.
  auto ns = OpenNetns(slot->netns_name());
  ASSERT_TRUE(ns.ok());
  auto echoed = InNetns<bool>(ns->get(), []() -> Result<bool> {
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s) return ErrnoError("socket");
    timeval tv{.tv_sec = 5, .tv_usec = 0};
    ::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(53);
    ::inet_pton(AF_INET, TestInternet::kResolver, &to.sin_addr);
    std::string d(200, 'p');
    // sockaddr_in is the sockaddr of AF_INET: the cast is how the sockets API takes it.
    if (::sendto(s.get(), d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) < 0)
      return ErrnoError("sendto");
    char buf[512];
    if (::recv(s.get(), buf, sizeof buf, 0) < 0) return ErrnoError("recv");
    return true;
  });
  ASSERT_TRUE(echoed.ok()) << echoed.status().ToString();
  auto proxied = slot->ReadCounters();
  ASSERT_TRUE(proxied.ok());
  EXPECT_GE(proxied->egress_bytes - after->egress_bytes, 20u + 8 + 200);
  EXPECT_EQ(proxied->ingress_bytes, after->ingress_bytes);

  // A policy change replaces the egress chain; the counters stay.
  auto policy = EgressPolicy::FromE2b({{"denyOut", {"203.0.113.0/24"}}}, true);
  ASSERT_TRUE(policy.ok());
  Status applied = slot->ApplyPolicy(*policy);
  ASSERT_TRUE(applied.ok()) << applied.ToString();
  auto updated = slot->ReadCounters();
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();
  EXPECT_EQ(updated->egress_bytes, proxied->egress_bytes);
  EXPECT_EQ(updated->ingress_bytes, proxied->ingress_bytes);

  Status released = slot->Release();
  EXPECT_TRUE(released.ok()) << released.ToString();
  EXPECT_FALSE(slot->ReadCounters().ok());  // nothing left to read
  EXPECT_EQ(host_->slots_in_use(), 0u);
}

}  // namespace
}  // namespace moat::net

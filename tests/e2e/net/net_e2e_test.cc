// Boots real microVMs (TCG, jailed) with network slots and checks egress from inside the guest.
// An "internet" namespace made by the test, with HTTP servers on 198.51.100.1 and 203.0.113.1
// (documentation ranges), stands in for the outside world. Traffic goes only to loopback and
// namespaces this test creates: a guard table of the test's own drops anything the test's
// slots forward to any other destination, so even a broken policy cannot reach the real
// uplink (and shows up as a timeout instead of the expected rejection). Every request is
// bounded in count and time.
#include <gtest/gtest.h>
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

}  // namespace
}  // namespace moat::net

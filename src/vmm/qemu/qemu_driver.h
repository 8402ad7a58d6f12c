// QemuDriver: VmmDriver for qemu-system-x86_64 -M microvm, driven over QMP. One object per VM;
// not thread-safe (the agent's lifecycle code serialises calls per sandbox).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "common/child_process.h"
#include "vmm/cgroup.h"
#include "vmm/qemu/command_line.h"
#include "vmm/qemu/qemu_version.h"
#include "vmm/qemu/qmp_client.h"
#include "vmm/vmm_driver.h"

namespace moat::vmm::qemu {

struct QemuDriverOptions {
  std::string qemu_binary = kDefaultQemuBinary;
  std::chrono::milliseconds qmp_connect_timeout{10000};
  std::chrono::milliseconds migration_timeout{30000};
  // Added to guest RAM for the cgroup memory limit when the JailSpec sets none: QEMU itself,
  // its TCG translation cache, device state.
  uint64_t memory_overhead_mib = 64 + kTcgTbSizeMib;
};

// Where Start() spent its time; the restore path is what every sandbox create pays.
struct StartTimings {
  std::chrono::microseconds spawn{0};         // fork+exec+jail until Spawn returned
  std::chrono::microseconds qmp_ready{0};     // until QMP answered qmp_capabilities
  std::chrono::microseconds state_loaded{0};  // restore: until migrate-incoming completed
  std::chrono::microseconds total{0};
};

class QemuDriver final : public VmmDriver {
 public:
  explicit QemuDriver(QemuDriverOptions options = {});
  ~QemuDriver() override;

  Status Start(const VmSpec& spec) override;
  // Reconnects QMP (the monitor's socket takes a new client once the old one is gone).
  Status Adopt(const VmSpec& spec, pid_t pid, uint64_t start_time) override;
  void Detach() override;
  Status Pause() override;
  Status Resume() override;
  Status SaveDeviceState(const std::string& path, bool durable) override;
  Status SaveMemorySnapshot(const std::string& state_path, const std::string& memory_path,
                            bool durable) override;
  Result<VmStatus> QueryStatus() override;
  Status Stop(std::chrono::milliseconds grace) override;
  void Kill() override;
  void SignalKill() override;
  Status SetCpuWeight(uint32_t weight) override;
  Result<int> WaitForExit(std::optional<std::chrono::milliseconds> timeout) override;
  pid_t pid() const override { return process_.pid(); }
  std::string VersionNumber() const override {
    return version_.major != 0 ? version_.Number() : std::string();
  }

  // Readable (poll/epoll) once the VMM process has exited.
  int pidfd() const { return process_.pidfd(); }
  const StartTimings& timings() const { return timings_; }
  const Cgroup* cgroup() const { return cgroup_ ? &*cgroup_ : nullptr; }
  QmpClient* qmp() { return qmp_.get(); }
  // The running QEMU's version (from its QMP greeting; probed from the binary before a start).
  const QemuVersion& version() const { return version_; }

 private:
  Status SetUpJail(const JailSpec& jail);
  Result<ChildProcess> SpawnQemu(const std::vector<std::string>& argv);
  Status ConnectQmp();
  Status LoadDeviceState();
  // Sets the capabilities and bandwidth of a save, stops the VM and starts `migrate` into `fd`
  // (a pipe, or a regular file opened O_WRONLY). *fdset is set when the fd went in an fd set
  // (file: transport): remove it once the migration has ended.
  Status StartSave(int fd, bool regular_file, uint64_t* cursor, std::optional<int64_t>* fdset);
  // Hands a regular file to QEMU for a migration and returns the URI naming it: `file:` through
  // an fd set where the version has it (`fd:` on a file is deprecated in 9.1), else `fd:`.
  Result<std::string> MigrationUri(int fd, bool regular_file, std::optional<int64_t>* fdset);
  void RemoveFdSet(std::optional<int64_t>* fdset);
  // The version from the QMP greeting (what runs, which an upgrade of the binary may not be).
  void TakeVersionFromGreeting();
  // Cancels a migration an earlier agent left running (its target file is gone with the
  // snapshot it was writing) and waits until it has ended.
  Status CancelMigration();
  // Waits for the MIGRATION event that ends a migration; the error names the final status.
  Status WaitMigration(uint64_t cursor, std::string_view what);
  // Adds QEMU's stderr tail to an error about the process.
  Status WithVmmLog(const Status& s) const;
  void Release();

  QemuDriverOptions options_;
  VmSpec spec_;
  std::optional<Cgroup> cgroup_;
  std::unique_ptr<PreparedJail> jail_;
  bool created_jail_root_ = false;
  ChildProcess process_;
  std::unique_ptr<QmpClient> qmp_;
  StartTimings timings_;
  QemuVersion version_;
  QemuFeatures features_;
  // After SaveDeviceState the shared memory file is a snapshot: running on would change it.
  bool memory_is_snapshot_ = false;
};

}  // namespace moat::vmm::qemu

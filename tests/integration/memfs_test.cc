// `moatd memfs` for real: the process started by MemfsProcess (as the agent starts it) over a
// directory store the test fills, its FUSE mount read through the kernel — pread, MAP_PRIVATE
// mappings, a SIGKILL and a restart. Needs root and /dev/fuse (skipped otherwise).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/unique_fd.h"
#include "memfs/memfs_control.h"
#include "storage/local_object_store.h"
#include "storage/sigv4.h"
#include "support/test_util.h"

namespace moat::memfs {
namespace {

using storage::kChunkSize;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class MemfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (FUSE mounts)";
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/fuse";
    std::string moatd = test_support::BuildDir() + "/bin/moatd";
    if (::access(moatd.c_str(), X_OK) != 0) GTEST_SKIP() << moatd << " is not built";
    auto dir = MakeTempDir("/tmp", "memfs-it-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
    auto store = storage::LocalObjectStore::Make(dir_ + "/store");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    MemfsProcessOptions o;
    o.moatd_binary = moatd;
    o.mount_dir = dir_ + "/mnt";
    o.control_dir = dir_ + "/control";
    o.cache_dir = dir_ + "/cache";
    o.cache_mib = 256;
    o.local_store = dir_ + "/store";
    o.log_file = dir_ + "/memfs.log";
    o.fill_delay_ms = 0;
    process_ = std::make_unique<MemfsProcess>(o);
    Status started = process_->EnsureRunning();
    ASSERT_TRUE(started.ok()) << started.ToString();
  }

  void TearDown() override {
    if (dir_.empty()) return;
    if (process_) {
      Status stopped = process_->Stop(std::chrono::seconds(10));
      EXPECT_TRUE(stopped.ok()) << stopped.ToString();
    }
    ::umount2((dir_ + "/mnt").c_str(), MNT_DETACH);  // only if a test left one behind
    if (HasFailure()) {
      auto log = ReadFile(dir_ + "/memfs.log");
      if (log.ok()) std::fprintf(stderr, "memfs.log:\n%s\n", log->c_str());
    }
    (void)RemoveTree(dir_);
  }

  const std::string& control() const { return process_->options().control_dir; }

  // A file of `chunks` chunks (the last `tail` bytes long when not 0) whose chunks listed in
  // `zero` are all-zero and the rest random; chunks into the store, its spec into the control
  // dir. Returns its bytes.
  std::string MakeFile(const std::string& name, size_t chunks, uint64_t tail,
                       const std::vector<size_t>& zero, const std::vector<uint32_t>& prefetch = {},
                       bool fill = false) {
    uint64_t size = chunks * kChunkSize - (tail == 0 ? 0 : kChunkSize - tail);
    std::mt19937_64 rng(std::hash<std::string>()(name + dir_));
    std::string data(size, '\0');
    MemfsFileSpec spec;
    spec.name = name;
    spec.chunks.size = size;
    spec.prefetch = prefetch;
    spec.fill = fill;
    for (size_t i = 0; i < chunks; ++i) {
      uint64_t begin = i * kChunkSize;
      uint64_t end = std::min(size, begin + kChunkSize);
      if (std::find(zero.begin(), zero.end(), i) != zero.end()) {
        spec.chunks.chunks.emplace_back(std::nullopt);
        continue;
      }
      for (uint64_t p = begin; p < end; p += 8) {
        uint64_t v = rng();
        std::memcpy(&data[p], &v, std::min<uint64_t>(8, end - p));
      }
      std::string_view bytes(data.data() + begin, end - begin);
      std::string hash = storage::Sha256Hex(bytes);
      EXPECT_TRUE(store_->Put(storage::ChunkKey(hash), bytes).ok());
      spec.chunks.chunks.emplace_back(hash);
    }
    Status written = WriteMemfsFile(control(), spec);
    EXPECT_TRUE(written.ok()) << written.ToString();
    specs_[name] = spec;
    return data;
  }

  UniqueFd Open(const std::string& name, int flags = O_RDONLY) {
    UniqueFd fd(::open(process_->PathOf(name).c_str(), flags | O_CLOEXEC));
    EXPECT_TRUE(fd.valid()) << process_->PathOf(name) << ": " << std::strerror(errno);
    // No readahead: each read reaches memfs as itself (the trace and fetch counts rely on it).
    if (fd) ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_RANDOM);
    return fd;
  }

  std::string Pread(int fd, uint64_t offset, size_t size) {
    std::string out(size, '\0');
    size_t done = 0;
    while (done < size) {
      ssize_t n = ::pread(fd, out.data() + done, size - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      EXPECT_GE(n, 0) << "pread at " << offset + done << ": " << std::strerror(errno);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    out.resize(done);
    return out;
  }

  // stats.json as written after this call (memfs writes it every second).
  nlohmann::json FreshStats() {
    int64_t after = NowUnixMs();
    for (int i = 0; i < 400; ++i) {
      auto stats = ReadMemfsStats(control());
      if (stats.ok() && (*stats)["time_unix_ms"].get<int64_t>() > after) return *stats;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "no fresh stats.json";
    return nlohmann::json::object();
  }

  template <typename Pred>
  nlohmann::json StatsWhen(Pred pred) {
    nlohmann::json stats;
    for (int i = 0; i < 10; ++i) {
      stats = FreshStats();
      if (pred(stats)) return stats;
    }
    ADD_FAILURE() << "stats never matched: " << stats.dump();
    return stats;
  }

  std::string dir_;
  std::unique_ptr<storage::LocalObjectStore> store_;
  std::unique_ptr<MemfsProcess> process_;
  std::map<std::string, MemfsFileSpec> specs_;
};

TEST_F(MemfsTest, RandomReadsReturnTheObjectBytes) {
  std::string data = MakeFile("rand", 6, 12345, {2, 4});
  UniqueFd fd = Open("rand");
  struct stat st {};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), data.size());
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0222, 0u) << std::oct << st.st_mode;  // read-only, whoever reads it
  EXPECT_EQ(st.st_uid, 0u);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    uint64_t offset = rng() % data.size();
    size_t length = 1 + rng() % (3 << 20);
    ASSERT_EQ(Pread(fd.get(), offset, length), data.substr(offset, length)) << offset;
  }
  // Every chunk boundary, straddled.
  for (uint64_t b = kChunkSize; b < data.size(); b += kChunkSize) {
    ASSERT_EQ(Pread(fd.get(), b - 3000, 6000), data.substr(b - 3000, 6000)) << b;
  }
  EXPECT_EQ(Pread(fd.get(), data.size() - 5, 100), data.substr(data.size() - 5));
  nlohmann::json stats = FreshStats();
  EXPECT_LE(stats["fetch"]["fetches"].get<uint64_t>(), 4u);  // each non-zero chunk at most once
  EXPECT_GT(stats["zero_chunk_reads"].get<uint64_t>(), 0u);
  EXPECT_EQ(stats["read_errors"], 0);
  EXPECT_EQ(stats["open_files"], 1);
}

TEST_F(MemfsTest, ZeroChunksAreAnsweredWithoutAStoreRead) {
  MakeFile("zeros", 4, 0, {0, 1, 3});
  UniqueFd fd = Open("zeros");
  for (uint64_t chunk : {0, 1, 3}) {
    EXPECT_EQ(Pread(fd.get(), chunk * kChunkSize, kChunkSize), std::string(kChunkSize, '\0'));
  }
  nlohmann::json stats = FreshStats();
  EXPECT_EQ(stats["fetch"]["fetches"], 0);
  EXPECT_EQ(stats["store"]["gets"], 0);
  EXPECT_GT(stats["zero_chunk_reads"].get<uint64_t>(), 0u);
}

TEST_F(MemfsTest, PrivateWritesNeverReachTheFile) {
  std::string data = MakeFile("priv", 2, 0, {1});
  UniqueFd fd = Open("priv");
  size_t size = data.size();
  // A private writable mapping over a read-only fd, as QEMU maps guest RAM (share=off).
  void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
  ASSERT_NE(map, MAP_FAILED) << std::strerror(errno);
  auto* bytes = static_cast<char*>(map);
  EXPECT_EQ(std::string(bytes + 4096, 64), data.substr(4096, 64));
  std::memset(bytes, 0xAB, 8192);
  std::memset(bytes + kChunkSize + 100, 0xCD, 100);  // in the zero chunk
  EXPECT_EQ(static_cast<unsigned char>(bytes[10]), 0xAB);
  ::munmap(map, size);
  void* again = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  ASSERT_NE(again, MAP_FAILED);
  EXPECT_EQ(std::string(static_cast<char*>(again), 8192), data.substr(0, 8192));
  EXPECT_EQ(std::string(static_cast<char*>(again) + kChunkSize, 4096), std::string(4096, '\0'));
  ::munmap(again, size);
  UniqueFd other = Open("priv");
  EXPECT_EQ(Pread(other.get(), 0, 8192), data.substr(0, 8192));
}

TEST_F(MemfsTest, ConcurrentReadersOfOneChunkCauseOneFetch) {
  std::string data = MakeFile("conc", 1, 0, {});
  UniqueFd fd = Open("conc");
  std::atomic<int> ready{0};
  std::atomic<int> good{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 16; ++t) {
    readers.emplace_back([&, t] {
      ++ready;
      while (ready.load() < 16) {
      }
      uint64_t offset = uint64_t(t) * 128 * 1024;
      if (Pread(fd.get(), offset, 128 * 1024) == data.substr(offset, 128 * 1024)) ++good;
    });
  }
  for (auto& r : readers) r.join();
  EXPECT_EQ(good.load(), 16);
  nlohmann::json stats = FreshStats();
  EXPECT_EQ(stats["fetch"]["fetches"], 1);
  EXPECT_EQ(stats["store"]["gets"], 1);
}

TEST_F(MemfsTest, ReadWriteOpensWorkButEveryChangeIsEROFS) {
  std::string data = MakeFile("ro", 1, 100, {});
  UniqueFd rw = Open("ro", O_RDWR);
  ASSERT_TRUE(rw.valid());
  EXPECT_EQ(Pread(rw.get(), 0, 100), data);
  errno = 0;
  EXPECT_EQ(::pwrite(rw.get(), "x", 1, 0), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(::ftruncate(rw.get(), 0), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(::open(process_->PathOf("ro").c_str(), O_WRONLY | O_CLOEXEC), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(::open(process_->PathOf("new").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(::unlink(process_->PathOf("ro").c_str()), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(::chmod(process_->PathOf("ro").c_str(), 0666), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(Pread(rw.get(), 0, 100), data);
}

TEST_F(MemfsTest, AChunkTheStoreLostFailsItsReadWithEIO) {
  std::string data = MakeFile("lost", 2, 0, {});
  ASSERT_TRUE(store_->Delete(storage::ChunkKey(*specs_["lost"].chunks.chunks[1])).ok());
  UniqueFd fd = Open("lost");
  char buf[4096];
  errno = 0;
  EXPECT_EQ(::pread(fd.get(), buf, sizeof(buf), kChunkSize + 8192), -1);
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(Pread(fd.get(), 8192, 4096), data.substr(8192, 4096));
  nlohmann::json stats = FreshStats();
  EXPECT_GT(stats["read_errors"].get<uint64_t>(), 0u);
  EXPECT_GT(stats["fetch"]["failures"].get<uint64_t>(), 0u);
}

TEST_F(MemfsTest, TheTraceIsTheFirstTouchOrderWrittenAtTheLastClose) {
  MakeFile("traced", 8, 0, {3});
  {
    UniqueFd fd = Open("traced");
    for (uint64_t chunk : {5, 2, 3, 7, 2, 5}) Pread(fd.get(), chunk * kChunkSize + 65536, 4096);
  }
  // The kernel sends RELEASE after close returns.
  Result<std::vector<uint32_t>> trace = NotFound("");
  for (int i = 0; i < 300 && !trace.ok(); ++i) {
    trace = ReadMemfsTrace(control(), "traced");
    if (!trace.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(*trace, (std::vector<uint32_t>{5, 2, 7}));
}

TEST_F(MemfsTest, PrefetchAndFillFetchChunksWithoutReads) {
  MakeFile("pre", 6, 0, {0}, /*prefetch=*/{4, 1}, /*fill=*/false);
  MakeFile("fil", 5, 7, {2}, /*prefetch=*/{3}, /*fill=*/true);
  UniqueFd pre = Open("pre");
  nlohmann::json stats =
      StatsWhen([](const nlohmann::json& s) { return s["prefetch"]["done"] == 2; });
  EXPECT_EQ(stats["fetch"]["fetches"], 2);
  EXPECT_EQ(stats["fill"]["queued"], 0);
  UniqueFd fil = Open("fil");
  stats = StatsWhen(
      [](const nlohmann::json& s) { return s["fill"]["done"] == 3 && s["prefetch"]["done"] == 3; });
  EXPECT_EQ(stats["fetch"]["fetches"], 6);  // 2, then the 4 non-zero chunks of "fil"
  EXPECT_EQ(stats["reads"], 0);
  EXPECT_EQ(stats["cache"]["pinned"], 9);  // every non-zero chunk of both open files
}

TEST_F(MemfsTest, ARemovedControlFileIsGoneForLookupsButOpenFilesKeepWorking) {
  std::string data = MakeFile("gone", 1, 0, {});
  MakeFile("kept", 1, 10, {0});
  std::vector<std::string> listed = DirNames(process_->options().mount_dir);
  EXPECT_EQ(listed, (std::vector<std::string>{"gone", "kept"}));
  UniqueFd fd = Open("gone");
  ASSERT_TRUE(RemoveMemfsFile(control(), "gone").ok());
  struct stat st {};
  bool vanished = false;
  for (int i = 0; i < 300 && !vanished; ++i) {
    vanished = ::stat(process_->PathOf("gone").c_str(), &st) < 0 && errno == ENOENT;
    if (!vanished) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(vanished);
  EXPECT_EQ(Pread(fd.get(), 1000, 1000), data.substr(1000, 1000));
  EXPECT_EQ(::stat(process_->PathOf("kept").c_str(), &st), 0);
}

TEST_F(MemfsTest, AfterAKillFaultsOnPagesNotResidentGetSigbusAndARestartServesAgain) {
  std::string data = MakeFile("vm", 4, 0, {});
  UniqueFd fd = Open("vm");
  void* map = ::mmap(nullptr, data.size(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
  ASSERT_NE(map, MAP_FAILED) << std::strerror(errno);
  ::madvise(map, data.size(), MADV_RANDOM);  // no read-around: only touched pages are resident
  auto* bytes = static_cast<volatile char*>(map);
  ASSERT_EQ(bytes[100], data[100]);  // resident from here on
  bytes[kChunkSize + 5] = 'w';       // a private copy

  std::optional<pid_t> pid = process_->pid();
  ASSERT_TRUE(pid.has_value());
  ASSERT_EQ(::kill(*pid, SIGKILL), 0);
  for (int i = 0; i < 500 && process_->pid().has_value(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_FALSE(process_->pid().has_value());

  // What a VM mapping the file sees: its resident and private pages stay readable...
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    bool same = bytes[100] == data[100] && bytes[kChunkSize + 5] == 'w';
    ::_exit(same ? 0 : 3);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // ...and its next fault on a page that is not resident is a SIGBUS.
  child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    char c = bytes[3 * kChunkSize + 12345];
    ::_exit(c == 0x7f ? 4 : 5);
  }
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS) << status;
  ::munmap(map, data.size());
  fd.Reset();

  // The agent restarts memfs (the dead mount is detached first); the file is served again.
  Status restarted = process_->EnsureRunning();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  ASSERT_TRUE(process_->pid().has_value());
  EXPECT_NE(*process_->pid(), *pid);
  UniqueFd again = Open("vm");
  EXPECT_EQ(Pread(again.get(), 3 * kChunkSize + 12345, 4096),
            data.substr(3 * kChunkSize + 12345, 4096));
  // A second EnsureRunning finds it running.
  pid_t running = *process_->pid();
  ASSERT_TRUE(process_->EnsureRunning().ok());
  EXPECT_EQ(*process_->pid(), running);
}

TEST_F(MemfsTest, ANewSupervisorAdoptsTheRunningMemfs) {
  pid_t running = *process_->pid();
  MemfsProcess second(process_->options());
  ASSERT_TRUE(second.EnsureRunning().ok());
  ASSERT_TRUE(second.pid().has_value());
  EXPECT_EQ(*second.pid(), running);
}

TEST_F(MemfsTest, SigtermUnmountsAndExitsZero) {
  std::string mount = process_->options().mount_dir;
  ASSERT_TRUE(MemfsProcess::IsMountLive(mount));
  Status stopped = process_->Stop(std::chrono::seconds(10));
  ASSERT_TRUE(stopped.ok()) << stopped.ToString();
  process_.reset();
  EXPECT_FALSE(MemfsProcess::IsMountLive(mount));
  EXPECT_FALSE(PathExists(dir_ + "/control/memfs.pid"));
  auto stats = ReadMemfsStats(dir_ + "/control");
  EXPECT_TRUE(stats.ok()) << stats.status().ToString();
}

}  // namespace
}  // namespace moat::memfs

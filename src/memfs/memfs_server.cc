#include "memfs/memfs_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "memfs/memfs_control.h"
#include "memfs/memfs_fuse.h"
#include "memfs/memory_files.h"
#include "storage/chunk_cache.h"
#include "storage/chunk_fetcher.h"
#include "storage/local_object_store.h"
#include "storage/s3_object_store.h"

namespace moat::memfs {
namespace {

using Clock = std::chrono::steady_clock;

int64_t UnixMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<std::unique_ptr<storage::ObjectStore>> OpenStore(const MemfsServerConfig& config) {
  if (!config.local_store.empty()) {
    MOAT_ASSIGN_OR_RETURN(auto store, storage::LocalObjectStore::Make(config.local_store));
    return std::unique_ptr<storage::ObjectStore>(std::move(store));
  }
  storage::S3Config s3;
  MOAT_ASSIGN_OR_RETURN(s3.location, storage::ParseS3Url(config.snapshot_store));
  s3.endpoint = config.s3_endpoint;
  s3.region = config.s3_region;
  MOAT_ASSIGN_OR_RETURN(s3.credentials, storage::LoadS3Credentials(config.s3_credentials_file));
  MOAT_ASSIGN_OR_RETURN(auto store, storage::S3ObjectStore::Make(std::move(s3)));
  return std::unique_ptr<storage::ObjectStore>(std::move(store));
}

// What stats.json holds (docs/snapshots.md lists the fields).
nlohmann::json StatsJson(MemoryFiles& files, storage::ChunkCache& cache,
                         storage::ChunkFetcher& fetcher, storage::ObjectStore& store,
                         Clock::time_point started) {
  MemoryFilesStats f = files.stats();
  storage::ChunkCacheStats c = cache.stats();
  storage::ChunkFetchStats fs = fetcher.stats();
  storage::ObjectStoreStats& s = store.stats();
  nlohmann::json bounds = nlohmann::json::array();
  for (double b : storage::kFetchLatencyBucketsMs) bounds.push_back(b);
  return {
      {"version", 1},
      {"pid", static_cast<int64_t>(::getpid())},
      {"time_unix_ms", UnixMillis()},
      {"uptime_ms",
       std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()},
      {"open_files", f.open_files},
      {"files", f.files},
      {"reads", f.reads},
      {"read_bytes", f.read_bytes},
      {"zero_chunk_reads", f.zero_chunk_reads},
      {"read_errors", f.read_errors},
      {"traces_written", f.traces_written},
      {"cache",
       {{"bytes", c.bytes},
        {"chunks", c.chunks},
        {"max_bytes", c.max_bytes},
        {"hits", c.hits},
        {"misses", c.misses},
        {"inserts", c.inserts},
        {"evictions", c.evictions},
        {"pinned", c.pinned}}},
      {"fetch",
       {{"fetches", fs.fetches},
        {"fetch_bytes", fs.fetch_bytes},
        {"failures", fs.failures},
        {"waits", fs.waits},
        // counts[i] for latencies up to bounds_ms[i]; the last count is the rest (+Inf).
        {"latency_ms",
         {{"bounds", bounds}, {"counts", fs.latency_buckets}, {"sum", fs.latency_sum_ms}}}}},
      {"store",
       {{"describe", store.Describe()},
        {"gets", s.gets.load()},
        {"get_bytes", s.get_bytes.load()},
        {"retries", s.retries.load()},
        {"failures", s.failures.load()}}},
      {"prefetch",
       {{"queued", f.background.prefetch_queued},
        {"done", f.background.prefetch_done},
        {"failed", f.background.prefetch_failed}}},
      {"fill",
       {{"queued", f.background.fill_queued},
        {"done", f.background.fill_done},
        {"failed", f.background.fill_failed}}},
      {"background", {{"pending", f.background.pending}, {"cancelled", f.background.cancelled}}},
  };
}

// The housekeeping thread: stats.json every second, trace windows, and control files that were
// removed or replaced (inotify), whose names the kernel must forget.
class Housekeeper {
 public:
  Housekeeper(MemfsServerConfig config, MemoryFiles& files, FuseMount& mount,
              storage::ChunkCache& cache, storage::ChunkFetcher& fetcher,
              storage::ObjectStore& store)
      : config_(std::move(config)),
        files_(files),
        mount_(mount),
        cache_(cache),
        fetcher_(fetcher),
        store_(store) {}
  ~Housekeeper() { Stop(); }

  Status Start() {
    stop_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_) return ErrnoError("eventfd");
    inotify_.Reset(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
    if (!inotify_) return ErrnoError("inotify_init1");
    if (::inotify_add_watch(inotify_.get(), config_.control_dir.c_str(),
                            IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
      return ErrnoError("inotify_add_watch(" + config_.control_dir + ")");
    }
    thread_ = std::thread([this] { Loop(); });
    return Status::Ok();
  }

  void Stop() {
    if (!thread_.joinable()) return;
    uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof(one));
    thread_.join();
  }

  void WriteStats() {
    Status s = ReplaceFile(MemfsStatsPath(config_.control_dir),
                           StatsJson(files_, cache_, fetcher_, store_, started_).dump());
    if (!s.ok()) {
      static RateLimiter limiter(1.0 / 60, 1);
      if (limiter.Allow()) LogWarn("memfs.stats_failed", {{"error", s.ToString()}});
    }
  }

 private:
  void Loop() {
    auto next_tick = Clock::now();
    for (;;) {
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now());
      pollfd fds[2] = {{stop_.get(), POLLIN, 0}, {inotify_.get(), POLLIN, 0}};
      int r = ::poll(fds, 2, static_cast<int>(std::max<int64_t>(0, wait.count())));
      if (r < 0 && errno != EINTR) {
        LogError("memfs.poll_failed", {{"error", std::string(std::strerror(errno))}});
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (r > 0 && (fds[0].revents & POLLIN) != 0) return;
      if (r > 0 && (fds[1].revents & POLLIN) != 0) DrainEvents();
      if (Clock::now() >= next_tick) {
        files_.Tick();
        WriteStats();
        next_tick = Clock::now() + std::chrono::seconds(1);
      }
    }
  }

  void DrainEvents() {
    alignas(inotify_event) char buf[16384];
    for (;;) {
      ssize_t n = ::read(inotify_.get(), buf, sizeof(buf));
      if (n <= 0) return;
      for (ssize_t off = 0; off < n;) {
        // The kernel writes whole inotify_event records, each followed by its name.
        const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
        off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
        if ((ev->mask & IN_Q_OVERFLOW) != 0) {
          for (const std::string& name : files_.Names()) Changed(name);
          continue;
        }
        if (ev->len == 0) continue;
        std::string_view entry(ev->name);
        constexpr std::string_view kSuffix = ".json";
        if (entry.size() <= kSuffix.size() || !entry.ends_with(kSuffix)) continue;
        std::string_view name = entry.substr(0, entry.size() - kSuffix.size());
        if (IsValidMemfsName(name)) Changed(name);
      }
    }
  }

  void Changed(std::string_view name) {
    if (files_.Revalidate(name)) {
      LogInfo("memfs.name_dropped", {{"name", std::string(name)}});
      mount_.InvalidateEntry(name);
    }
  }

  const MemfsServerConfig config_;
  MemoryFiles& files_;
  FuseMount& mount_;
  storage::ChunkCache& cache_;
  storage::ChunkFetcher& fetcher_;
  storage::ObjectStore& store_;
  const Clock::time_point started_ = Clock::now();
  UniqueFd stop_;
  UniqueFd inotify_;
  std::thread thread_;
};

// Detaches from the caller: forks; the parent waits until the child says the mount is live
// (exit 0) or the child ends without saying so (exit 1). Must run before any thread starts.
// Returns, in the child, the pipe to write the one byte to.
UniqueFd Daemonize() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) < 0) {
    std::perror("moatd memfs: pipe2");
    std::exit(1);
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("moatd memfs: fork");
    std::exit(1);
  }
  if (pid > 0) {
    ::close(fds[1]);
    char ok = 0;
    ssize_t n;
    do {
      n = ::read(fds[0], &ok, 1);
    } while (n < 0 && errno == EINTR);
    std::exit(n == 1 ? 0 : 1);
  }
  ::close(fds[0]);
  ::setsid();
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull >= 0) {
    ::dup2(devnull, 0);
    ::close(devnull);
  }
  return UniqueFd(fds[1]);
}

// Locks the control directory for this process (released by the kernel when it exits).
Result<UniqueFd> LockControlDir(const std::string& control_dir) {
  std::string path = control_dir + "/memfs.lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("open(" + path + ")");
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
    if (errno == EWOULDBLOCK) {
      auto pid = ReadFile(MemfsPidPath(control_dir));
      std::string owner = pid.ok() ? pid->substr(0, pid->find('\n')) : "";
      return FailedPrecondition("another memfs runs on " + control_dir +
                                (owner.empty() ? "" : " (pid " + owner + ")"));
    }
    return ErrnoError("flock(" + path + ")");
  }
  return fd;
}

int Fail(const std::string& what, const Status& s) {
  LogError("memfs.failed", {{"stage", what}, {"error", s.ToString()}});
  std::fprintf(stderr, "moatd memfs: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

}  // namespace

Status ValidateMemfsServerConfig(const MemfsServerConfig& c) {
  if (c.mount_dir.empty()) return InvalidArgument("--mount: required");
  if (c.control_dir.empty()) return InvalidArgument("--control: required");
  if (c.cache_dir.empty()) return InvalidArgument("--cache-dir: required");
  if (c.cache_mib == 0) return InvalidArgument("--cache-mib: must be at least 1");
  if (c.cache_mib > (uint64_t{1} << 30)) return InvalidArgument("--cache-mib: too large");
  bool s3 = !c.snapshot_store.empty();
  bool local = !c.local_store.empty();
  if (s3 == local) {
    return InvalidArgument("give exactly one of --snapshot-store (S3) and --local-store");
  }
  if (s3) {
    auto location = storage::ParseS3Url(c.snapshot_store);
    if (!location.ok()) return location.status().Annotate("--snapshot-store");
    if (c.s3_endpoint.empty()) return InvalidArgument("--s3-endpoint: required with S3");
    if (c.s3_region.empty()) return InvalidArgument("--s3-region: empty");
  }
  if (c.trace_window_s < 0 || c.trace_window_s > 3600) {
    return InvalidArgument("--trace-window-s: want 0..3600");
  }
  if (c.fill_delay_ms < 0 || c.fill_delay_ms > 3600000) {
    return InvalidArgument("--fill-delay-ms: want 0..3600000");
  }
  if (c.prefetch_threads < 1 || c.prefetch_threads > 256) {
    return InvalidArgument("--prefetch-threads: want 1..256");
  }
  if (c.fill_threads < 1 || c.fill_threads > c.prefetch_threads) {
    return InvalidArgument("--fill-threads: want 1..--prefetch-threads");
  }
  if (c.max_threads < 2 || c.max_threads > 1024) return InvalidArgument("--max-threads: 2..1024");
  return Status::Ok();
}

int RunMemfsServer(const MemfsServerConfig& config) {
  if (Status valid = ValidateMemfsServerConfig(config); !valid.ok()) {
    std::fprintf(stderr, "moatd memfs: %s\n", valid.message().c_str());
    return 2;
  }
  UniqueFd ready;
  if (!config.foreground) ready = Daemonize();

  // Every thread started from here on inherits these blocked; the FUSE loop's thread lets them
  // in (FuseMount::Run).
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  if (Status s = MakeDirs(config.control_dir); !s.ok()) return Fail("control dir", s);
  auto lock = LockControlDir(config.control_dir);
  if (!lock.ok()) return Fail("lock", lock.status());
  if (Status s = MakeDirs(config.cache_dir); !s.ok()) return Fail("cache dir", s);
  auto store = OpenStore(config);
  if (!store.ok()) return Fail("store", store.status());
  auto cache = storage::ChunkCache::Open(config.cache_dir, config.cache_mib << 20);
  if (!cache.ok()) return Fail("chunk cache", cache.status());
  storage::ChunkFetcher fetcher(**cache, **store);
  MemoryFilesOptions options;
  options.control_dir = config.control_dir;
  options.trace_window = std::chrono::seconds(config.trace_window_s);
  options.background_threads = static_cast<size_t>(config.prefetch_threads);
  options.max_fill_in_flight = static_cast<size_t>(config.fill_threads);
  options.fill_delay = std::chrono::milliseconds(config.fill_delay_ms);
  MemoryFiles files(options, **cache, fetcher);
  auto mount = FuseMount::Mount(files, config.mount_dir);
  if (!mount.ok()) return Fail("mount", mount.status());
  std::string pid_path = MemfsPidPath(config.control_dir);
  std::string pid_text = std::to_string(::getpid()) + "\n";
  if (Status s = ReplaceFile(pid_path, pid_text); !s.ok()) return Fail("pid file", s);
  Housekeeper housekeeper(config, files, **mount, **cache, fetcher, **store);
  if (Status s = housekeeper.Start(); !s.ok()) return Fail("housekeeping", s);
  LogInfo("memfs.serving", {{"mount", config.mount_dir},
                            {"control", config.control_dir},
                            {"cache", config.cache_dir},
                            {"cache_mib", config.cache_mib},
                            {"store", (*store)->Describe()},
                            {"pid", static_cast<int64_t>(::getpid())}});
  if (ready) {
    char ok = 1;
    (void)!::write(ready.get(), &ok, 1);
    ready.Reset();
  }

  Status ran = (*mount)->Run(config.max_threads);
  LogInfo("memfs.stopping", {{"reason", ran.ok() ? "signal or unmount" : ran.ToString()}});
  housekeeper.Stop();
  (*mount)->Unmount();
  files.Shutdown();
  housekeeper.WriteStats();
  // The pid file goes only if it is still ours.
  if (auto text = ReadFile(pid_path); text.ok() && *text == pid_text) ::unlink(pid_path.c_str());
  mount->reset();  // closes /dev/fuse: VMs still mapping a file lose it (docs/snapshots.md)
  LogInfo("memfs.stopped");
  return ran.ok() ? 0 : 1;
}

}  // namespace moat::memfs

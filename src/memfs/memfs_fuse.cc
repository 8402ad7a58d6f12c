#define FUSE_USE_VERSION 312

#include "memfs/memfs_fuse.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/fs.h"
#include "common/log.h"

namespace moat::memfs {
namespace {

// Files are immutable: the kernel may keep their entries and attributes (a removed control file
// is invalidated explicitly).
constexpr double kForever = 365.0 * 24 * 3600;

MemoryFiles& FilesOf(fuse_req_t req) {
  // The session's userdata is the FuseMount's MemoryFiles (set in Mount; it outlives the
  // session).
  return *static_cast<MemoryFiles*>(fuse_req_userdata(req));
}

// agent::kTemplateGid (memfs does not link the agent).
constexpr gid_t kSandboxesGid = 899999;

struct stat StatOf(const MemoryFiles::Attr& a) {
  struct stat st {};
  st.st_ino = a.ino;
  // Root's, readable by the sandboxes' group only, like a local snapshot's memory file: the
  // jailed VMMs that map it run with that group (agent/template_store.h kTemplateGid; the VMM
  // driver refuses a file its jail could read only as "other").
  st.st_mode = S_IFREG | 0440;
  st.st_nlink = 1;
  st.st_uid = 0;
  st.st_gid = kSandboxesGid;
  st.st_size = static_cast<off_t>(a.size);
  st.st_blksize = 4096;
  st.st_blocks = static_cast<blkcnt_t>((a.size + 511) / 512);
  st.st_mtim = a.mtime;
  st.st_ctim = a.mtime;
  st.st_atim = a.mtime;
  return st;
}

struct stat RootStat() {
  struct stat st {};
  st.st_ino = MemoryFiles::kRootIno;
  st.st_mode = S_IFDIR | 0555;
  st.st_nlink = 2;
  return st;
}

int ErrnoOf(const Status& s) {
  switch (s.code()) {
    case ErrorCode::kNotFound: return ENOENT;
    default: return EIO;
  }
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (parent != MemoryFiles::kRootIno) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  auto attr = FilesOf(req).Lookup(name);
  if (!attr.ok()) {
    if (attr.status().code() != ErrorCode::kNotFound) {
      static RateLimiter limiter(1, 5);
      if (limiter.Allow()) {
        LogError("memfs.lookup_failed", {{"name", name}, {"error", attr.status().ToString()}});
      }
    }
    fuse_reply_err(req, ErrnoOf(attr.status()));
    return;
  }
  fuse_entry_param e{};
  e.ino = attr->ino;
  e.generation = 1;
  e.attr = StatOf(*attr);
  e.attr_timeout = kForever;
  e.entry_timeout = kForever;
  fuse_reply_entry(req, &e);
}

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  FilesOf(req).Forget(ino, nlookup);
  fuse_reply_none(req);
}

void OpForgetMulti(fuse_req_t req, size_t count, struct fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) FilesOf(req).Forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  if (ino == MemoryFiles::kRootIno) {
    struct stat st = RootStat();
    fuse_reply_attr(req, &st, kForever);
    return;
  }
  auto attr = FilesOf(req).GetAttr(ino);
  if (!attr.ok()) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st = StatOf(*attr);
  fuse_reply_attr(req, &st, kForever);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  int mode = fi->flags & O_ACCMODE;
  // O_RDWR is accepted (QEMU < 8.2 opens its memory file so); writes then fail with EROFS.
  if (mode == O_WRONLY || (fi->flags & O_TRUNC) != 0) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (ino == MemoryFiles::kRootIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  Status opened = FilesOf(req).Open(ino);
  if (!opened.ok()) {
    fuse_reply_err(req, ErrnoOf(opened));
    return;
  }
  fi->keep_cache = 1;  // FOPEN_KEEP_CACHE: the page cache is shared by every VM mapping it
  fi->direct_io = 0;   // never FOPEN_DIRECT_IO
  fi->noflush = 1;     // nothing to flush: no FLUSH request on close
  if (fuse_reply_open(req, fi) != 0) {
    // The opener is gone (interrupted): the kernel sends no RELEASE for this open.
    FilesOf(req).Release(ino);
  }
}

void OpRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  FilesOf(req).Release(ino);
  fuse_reply_err(req, 0);
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  // One buffer per loop thread, grown to the largest read (the kernel's max_pages bound it).
  thread_local std::vector<char> buffer;
  if (buffer.size() < size) buffer.resize(size);
  auto n = FilesOf(req).Read(ino, static_cast<uint64_t>(off), size, buffer.data());
  if (!n.ok()) {
    // Whatever failed (a chunk the store lost or cannot serve, the cache's disk), the reader
    // gets EIO; a VM whose fault this was gets SIGBUS (docs/snapshots.md).
    fuse_reply_err(req, EIO);
    return;
  }
  fuse_reply_buf(req, buffer.data(), *n);
}

// A directory listing, taken at opendir.
struct Listing {
  std::vector<std::pair<std::string, fuse_ino_t>> entries;
};

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != MemoryFiles::kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  auto listing = std::make_unique<Listing>();
  listing->entries.emplace_back(".", MemoryFiles::kRootIno);
  listing->entries.emplace_back("..", MemoryFiles::kRootIno);
  for (auto& [name, file_ino] : FilesOf(req).List()) listing->entries.emplace_back(name, file_ino);
  // fh carries the listing until releasedir frees it.
  fi->fh = reinterpret_cast<uint64_t>(listing.release());
  if (fuse_reply_open(req, fi) != 0) delete reinterpret_cast<Listing*>(fi->fh);
}

void OpReaddir(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  // fh is the Listing opendir made (alive until releasedir).
  const auto* listing = reinterpret_cast<const Listing*>(fi->fh);
  std::vector<char> buf(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < listing->entries.size(); ++i) {
    const auto& [name, ino] = listing->entries[i];
    struct stat st {};
    st.st_ino = ino;
    st.st_mode = ino == MemoryFiles::kRootIno ? S_IFDIR : S_IFREG;
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st,
                                    static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OpReleasedir(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  // fh is the Listing opendir made; this is its one release.
  delete reinterpret_cast<Listing*>(fi->fh);
  fuse_reply_err(req, 0);
}

void OpStatfs(fuse_req_t req, fuse_ino_t /*ino*/) {
  struct statvfs sv {};
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_namemax = 64;
  sv.f_flag = ST_RDONLY;
  fuse_reply_statfs(req, &sv);
}

// Everything that would change the filesystem.
void OpSetattr(fuse_req_t req, fuse_ino_t, struct stat*, int, fuse_file_info*) {
  fuse_reply_err(req, EROFS);
}
void OpWrite(fuse_req_t req, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) {
  fuse_reply_err(req, EROFS);
}
void OpWriteBuf(fuse_req_t req, fuse_ino_t, fuse_bufvec*, off_t, fuse_file_info*) {
  fuse_reply_err(req, EROFS);
}
void OpMknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) {
  fuse_reply_err(req, EROFS);
}
void OpMkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) {
  fuse_reply_err(req, EROFS);
}
void OpUnlink(fuse_req_t req, fuse_ino_t, const char*) {
  fuse_reply_err(req, EROFS);
}
void OpSymlink(fuse_req_t req, const char*, fuse_ino_t, const char*) {
  fuse_reply_err(req, EROFS);
}
void OpRename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned int) {
  fuse_reply_err(req, EROFS);
}
void OpLink(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) {
  fuse_reply_err(req, EROFS);
}
void OpCreate(fuse_req_t req, fuse_ino_t, const char*, mode_t, fuse_file_info*) {
  fuse_reply_err(req, EROFS);
}
void OpSetxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) {
  fuse_reply_err(req, EROFS);
}
void OpRemovexattr(fuse_req_t req, fuse_ino_t, const char*) {
  fuse_reply_err(req, EROFS);
}
void OpFallocate(fuse_req_t req, fuse_ino_t, int, off_t, off_t, fuse_file_info*) {
  fuse_reply_err(req, EROFS);
}

void OpInit(void* /*userdata*/, fuse_conn_info* conn) {
  // Reads only: no writeback cache. Reads of different pages run in parallel (async read).
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.forget_multi = OpForgetMulti;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.unlink = OpUnlink;
  ops.rmdir = OpUnlink;
  ops.symlink = OpSymlink;
  ops.rename = OpRename;
  ops.link = OpLink;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.write_buf = OpWriteBuf;
  ops.release = OpRelease;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.releasedir = OpReleasedir;
  ops.statfs = OpStatfs;
  ops.setxattr = OpSetxattr;
  ops.removexattr = OpRemovexattr;
  ops.create = OpCreate;
  ops.fallocate = OpFallocate;
  return ops;
}

}  // namespace

Result<bool> DetachStaleMount(const std::string& mount_dir) {
  struct stat st {};
  if (::stat(mount_dir.c_str(), &st) == 0 || errno != ENOTCONN) return false;
  // A FUSE mount whose daemon died: detach it (a VM still mapping it keeps it until it exits).
  if (::umount2(mount_dir.c_str(), MNT_DETACH) < 0) {
    return ErrnoError("umount2(" + mount_dir + ", MNT_DETACH)");
  }
  LogWarn("memfs.stale_mount_detached", {{"mount", mount_dir}});
  return true;
}

Result<std::unique_ptr<FuseMount>> FuseMount::Mount(MemoryFiles& files,
                                                    const std::string& mount_dir) {
  MOAT_RETURN_IF_ERROR(DetachStaleMount(mount_dir).status());
  MOAT_RETURN_IF_ERROR(MakeDirs(mount_dir));
  struct statfs sfs {};
  if (::statfs(mount_dir.c_str(), &sfs) == 0 &&
      static_cast<int64_t>(sfs.f_type) == kFuseSuperMagic) {
    return FailedPrecondition(mount_dir + " is a live FUSE mount already (another memfs?)");
  }
  std::unique_ptr<FuseMount> mount(new FuseMount(files, mount_dir));
  std::vector<std::string> argv = {
      "moatd-memfs", "-o", "allow_other,default_permissions,fsname=moat-memfs,subtype=moat-memfs"};
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(cargv.size()), cargv.data());
  static const fuse_lowlevel_ops kOps = MakeOps();
  mount->session_ = fuse_session_new(&args, &kOps, sizeof(kOps), &mount->files_);
  fuse_opt_free_args(&args);
  if (mount->session_ == nullptr) return Internal("fuse_session_new failed (see the log)");
  if (fuse_session_mount(mount->session_, mount_dir.c_str()) != 0) {
    return Internal("fuse_session_mount(" + mount_dir + ") failed (see the log)");
  }
  mount->mounted_.store(true);
  LogInfo("memfs.mounted", {{"mount", mount_dir}});
  return mount;
}

FuseMount::~FuseMount() {
  Unmount();
  if (session_ != nullptr) fuse_session_destroy(session_);
}

Status FuseMount::Run(int max_threads) {
  if (fuse_set_signal_handlers(session_) != 0) return Internal("fuse_set_signal_handlers failed");
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, 0);
  fuse_loop_cfg_set_max_threads(config, static_cast<unsigned>(max_threads));
  fuse_loop_cfg_set_idle_threads(config, static_cast<unsigned>(max_threads / 2));
  // Let SIGTERM/SIGINT/SIGHUP in on this thread only (every other thread blocks them): libfuse's
  // handler ends the loop, which waits in sem_wait on this thread.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGHUP);
  pthread_sigmask(SIG_UNBLOCK, &stop, nullptr);
  int rc = fuse_session_loop_mt(session_, config);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  fuse_loop_cfg_destroy(config);
  fuse_remove_signal_handlers(session_);
  // A signal ends the loop with that signal's number: an orderly stop.
  if (rc < 0) return Internal("fuse loop: " + std::string(std::strerror(-rc)));
  return Status::Ok();
}

void FuseMount::InvalidateEntry(std::string_view name) {
  if (session_ == nullptr || !mounted_) return;
  std::string copy(name);  // libfuse sends name.size() + 1 bytes: NUL-terminated
  int rc =
      fuse_lowlevel_notify_inval_entry(session_, MemoryFiles::kRootIno, copy.c_str(), copy.size());
  if (rc != 0 && rc != -ENOENT) {
    LogWarn("memfs.inval_entry_failed",
            {{"name", std::string(name)}, {"error", std::string(std::strerror(-rc))}});
  }
}

void FuseMount::Unmount() {
  if (session_ == nullptr || !mounted_.exchange(false)) return;
  fuse_session_unmount(session_);
  LogInfo("memfs.unmounted", {{"mount", mount_dir_}});
}

}  // namespace moat::memfs

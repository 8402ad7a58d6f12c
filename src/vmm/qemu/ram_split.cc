#include "vmm/qemu/ram_split.h"

#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

#include "common/socket.h"

namespace moat::vmm::qemu {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint8_t kConfiguration = 0x07;
constexpr uint8_t kSubsection = 0x05;
constexpr uint8_t kSectionStart = 0x01;
constexpr uint8_t kSectionPart = 0x02;
constexpr uint8_t kSectionEnd = 0x03;
constexpr uint8_t kSectionFull = 0x04;
constexpr uint8_t kCommand = 0x08;
constexpr uint8_t kEof = 0x00;
constexpr uint8_t kSectionFooter = 0x7e;
// QEMU_VM_COMMAND MIG_CMD_SWITCHOVER_START (10.0): no payload.
constexpr uint16_t kCmdSwitchoverStart = 0x000b;

constexpr uint64_t kFlagZero = 0x02;
constexpr uint64_t kFlagMemSize = 0x04;
constexpr uint64_t kFlagPage = 0x08;
constexpr uint64_t kFlagEos = 0x10;
constexpr uint64_t kFlagContinue = 0x20;
constexpr uint64_t kFlagMask = kTargetPageSize - 1;

constexpr size_t kMinInputBuffer = 8192;
constexpr size_t kStateBuffer = size_t{64} << 10;
constexpr int kMaxIov = 256;

Status Malformed(std::string what) {
  return InvalidArgument("migration stream: " + std::move(what));
}

uint16_t Be16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}
uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint64_t Be64(const uint8_t* p) {
  return (uint64_t{Be32(p)} << 32) | Be32(p + 4);
}
void PutBe64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

std::string Hex(uint64_t v, int digits) {
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%0*llx", digits, static_cast<unsigned long long>(v));
  return hex;
}

std::string At(uint64_t offset) {
  return " at stream offset " + std::to_string(offset);
}

// Buffered reads from QEMU's end of the pipe, bounded in time and cancellable.
class Input {
 public:
  Input(int fd, int cancel_fd, size_t buffer_bytes, Clock::time_point deadline,
        std::function<Status()> before_move)
      : fd_(fd),
        cancel_fd_(cancel_fd),
        deadline_(deadline),
        before_move_(std::move(before_move)),
        buf_(buffer_bytes) {}

  // Makes n bytes available at data(); a stream that ends first is malformed.
  Status Need(size_t n) {
    while (end_ - pos_ < n) {
      MOAT_ASSIGN_OR_RETURN(size_t got, Fill());
      if (got == 0) return Malformed("ends early (truncated, or QEMU's migration failed)");
    }
    return Status::Ok();
  }
  const uint8_t* data() const { return buf_.data() + pos_; }
  size_t available() const { return end_ - pos_; }
  void Skip(size_t n) { pos_ += n; }
  uint64_t total() const { return total_; }
  // The position of data() in the stream.
  uint64_t offset() const { return total_ - (end_ - pos_); }
  std::chrono::microseconds waited() const { return waited_; }

  // Reads more (at least one byte unless the stream has ended: 0).
  Result<size_t> Fill() {
    if (end_ == buf_.size()) {
      // Pointers into the buffer (queued page writes) must be used before the bytes move.
      MOAT_RETURN_IF_ERROR(before_move_());
      std::memmove(buf_.data(), buf_.data() + pos_, end_ - pos_);
      end_ -= pos_;
      pos_ = 0;
    }
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now());
      if (left.count() <= 0) return DeadlineExceeded("migration stream: not finished in time");
      std::array<pollfd, 2> fds{pollfd{fd_, POLLIN, 0}, pollfd{cancel_fd_, POLLIN, 0}};
      auto wait_start = Clock::now();
      int r = ::poll(fds.data(), cancel_fd_ >= 0 ? 2 : 1, static_cast<int>(left.count()));
      waited_ += std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - wait_start);
      if (r < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("poll(migration stream)");
      }
      if (cancel_fd_ >= 0 && fds[1].revents != 0) {
        return Status(ErrorCode::kCancelled, "migration stream: cancelled");
      }
      if (r == 0) continue;
      ssize_t n = ::read(fd_, buf_.data() + end_, buf_.size() - end_);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return ErrnoError("read(migration stream)");
      }
      end_ += static_cast<size_t>(n);
      total_ += static_cast<uint64_t>(n);
      return static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
  int cancel_fd_;
  Clock::time_point deadline_;
  std::function<Status()> before_move_;
  std::vector<uint8_t> buf_;
  size_t pos_ = 0, end_ = 0;
  uint64_t total_ = 0;
  std::chrono::microseconds waited_{0};
};

// The rewritten stream, capped.
class StateOutput {
 public:
  StateOutput(int fd, uint64_t max_bytes) : fd_(fd), max_(max_bytes) { buf_.reserve(kStateBuffer); }
  Status Write(const void* p, size_t n) {
    if (written_ + buf_.size() + n > max_) {
      return ResourceExhausted("migration stream: device state over " + std::to_string(max_) +
                               " bytes");
    }
    buf_.append(static_cast<const char*>(p), n);
    return buf_.size() >= kStateBuffer ? Flush() : Status::Ok();
  }
  Status Flush() {
    if (buf_.empty()) return Status::Ok();
    MOAT_RETURN_IF_ERROR(WriteAll(fd_, buf_).Annotate("writing the device state"));
    written_ += buf_.size();
    buf_.clear();
    return Status::Ok();
  }
  uint64_t bytes() const { return written_ + buf_.size(); }

 private:
  int fd_;
  uint64_t max_;
  uint64_t written_ = 0;
  std::string buf_;
};

// Pages of the block, written at their offsets; runs of consecutive pages go out in one
// pwritev straight from the input buffer.
class MemoryOutput {
 public:
  MemoryOutput(int fd, uint64_t block_bytes)
      : fd_(fd), written_(block_bytes / kTargetPageSize, false) {}

  Status Page(uint64_t offset, const uint8_t* p) {
    if (n_ > 0 && (offset != next_ || n_ == kMaxIov)) MOAT_RETURN_IF_ERROR(Flush());
    if (n_ == 0) start_ = offset;
    iov_[n_++] = {const_cast<uint8_t*>(p), kTargetPageSize};
    next_ = offset + kTargetPageSize;
    written_[offset / kTargetPageSize] = true;
    return Status::Ok();
  }

  // A page that is all `fill`: a hole, unless something was written there before.
  Status Fill(uint64_t offset, uint8_t fill) {
    MOAT_RETURN_IF_ERROR(Flush());
    size_t idx = offset / kTargetPageSize;
    if (fill == 0 && !written_[idx]) return Status::Ok();
    std::array<uint8_t, kTargetPageSize> page;
    page.fill(fill);
    MOAT_RETURN_IF_ERROR(WriteAt(page.data(), offset));
    written_[idx] = fill != 0;
    return Status::Ok();
  }

  Status Flush() {
    int i = 0;
    uint64_t off = start_;
    while (i < n_) {
      ssize_t w = ::pwritev(fd_, iov_.data() + i, n_ - i, static_cast<off_t>(off));
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("writing the memory file");
      }
      if (w == 0) return Internal("writing the memory file: no progress");
      off += static_cast<uint64_t>(w);
      for (size_t left = static_cast<size_t>(w); left > 0;) {
        size_t take = std::min(left, iov_[i].iov_len);
        iov_[i].iov_base = static_cast<uint8_t*>(iov_[i].iov_base) + take;
        iov_[i].iov_len -= take;
        left -= take;
        if (iov_[i].iov_len == 0) ++i;
      }
    }
    n_ = 0;
    return Status::Ok();
  }

 private:
  Status WriteAt(const uint8_t* p, uint64_t offset) {
    for (size_t done = 0; done < kTargetPageSize;) {
      ssize_t w =
          ::pwrite(fd_, p + done, kTargetPageSize - done, static_cast<off_t>(offset + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return ErrnoError("writing the memory file");
      done += static_cast<size_t>(w);
    }
    return Status::Ok();
  }

  int fd_;
  std::vector<bool> written_;
  std::array<iovec, kMaxIov> iov_{};
  int n_ = 0;
  uint64_t start_ = 0, next_ = 0;
};

class Splitter {
 public:
  Splitter(int in_fd, int state_fd, int memory_fd, const RamSplitOptions& o)
      : o_(o),
        mem_(memory_fd, o.block_bytes),
        in_(in_fd, o.cancel_fd, o.read_buffer_bytes, Clock::now() + o.timeout,
            [this] { return mem_.Flush(); }),
        out_(state_fd, o.max_state_bytes) {}

  Result<RamSplitStats> Run() {
    MOAT_RETURN_IF_ERROR(Header());
    for (bool devices = false; !devices;) {
      MOAT_ASSIGN_OR_RETURN(devices, NextSection());
    }
    if (!block_listed_) return Malformed("no RAM block \"" + o_.block + "\" in the stream");
    MOAT_RETURN_IF_ERROR(mem_.Flush());
    MOAT_RETURN_IF_ERROR(Passthrough());
    stats_.state_bytes = out_.bytes();
    stats_.stream_bytes = in_.total();
    stats_.waited = in_.waited();
    return stats_;
  }

 private:
  // One step at a section boundary before the device sections: a "ram" START, PART or END
  // section (split), or the SWITCHOVER_START command between ram's START and END (copied).
  // True where the device sections begin (a FULL or START section of another section, or EOF):
  // the rest is copied as it is. Anything else is an error, never "the device sections".
  Result<bool> NextSection() {
    MOAT_RETURN_IF_ERROR(in_.Need(1));
    const uint64_t at = in_.offset();
    const uint8_t type = in_.data()[0];
    switch (type) {
      case kSectionStart:
      case kSectionFull: {
        MOAT_RETURN_IF_ERROR(in_.Need(6));
        size_t len = in_.data()[5];
        MOAT_RETURN_IF_ERROR(in_.Need(6 + len + 8));
        if (std::string_view(reinterpret_cast<const char*>(in_.data()) + 6, len) != "ram") {
          return true;  // the device sections
        }
        if (type == kSectionFull) return Malformed("a FULL \"ram\" section" + At(at));
        if (ram_id_) return Malformed("a second \"ram\" START section" + At(at));
        ram_id_ = Be32(in_.data() + 1);
        MOAT_RETURN_IF_ERROR(Copy(6 + len + 8));
        MOAT_RETURN_IF_ERROR(RamPayload(/*start=*/true));
        return false;
      }
      case kSectionPart:
      case kSectionEnd: {
        MOAT_RETURN_IF_ERROR(in_.Need(5));
        uint32_t id = Be32(in_.data() + 1);
        std::string what = type == kSectionPart ? "a PART section" : "an END section";
        if (!ram_id_) {
          return Malformed(what + " (section id " + std::to_string(id) +
                           ") before the \"ram\" START section" + At(at));
        }
        if (id != *ram_id_) {
          return Malformed(what + " of section id " + std::to_string(id) + ", not \"ram\" (" +
                           std::to_string(*ram_id_) + ")" + At(at));
        }
        if (ram_ended_) return Malformed(what + " of \"ram\" after its END section" + At(at));
        ram_ended_ = type == kSectionEnd;
        MOAT_RETURN_IF_ERROR(Copy(5));
        MOAT_RETURN_IF_ERROR(RamPayload(/*start=*/false));
        return false;
      }
      case kCommand: {
        MOAT_RETURN_IF_ERROR(in_.Need(5));
        uint16_t cmd = Be16(in_.data() + 1);
        uint16_t len = Be16(in_.data() + 3);
        if (cmd != kCmdSwitchoverStart || len != 0) {
          return Malformed("unsupported QEMU_VM_COMMAND " + Hex(cmd, 4) + " (len " +
                           std::to_string(len) + ")" + At(at) +
                           " (only SWITCHOVER_START, 0x000b with len 0, is known)");
        }
        if (!ram_id_ || ram_ended_) {
          return Malformed("SWITCHOVER_START outside the \"ram\" sections" + At(at));
        }
        MOAT_RETURN_IF_ERROR(Copy(5));
        return false;
      }
      case kEof: return true;
      default:
        return Malformed("section type " + Hex(type, 2) + At(at) +
                         " (expected a \"ram\" section, SWITCHOVER_START, a device section or "
                         "EOF)");
    }
  }

  Status Copy(size_t n) {
    MOAT_RETURN_IF_ERROR(in_.Need(n));
    MOAT_RETURN_IF_ERROR(out_.Write(in_.data(), n));
    in_.Skip(n);
    return Status::Ok();
  }

  // u8 length + bytes, consumed (not copied).
  Result<std::string> ReadIdstr() {
    MOAT_RETURN_IF_ERROR(in_.Need(1));
    size_t len = in_.data()[0];
    MOAT_RETURN_IF_ERROR(in_.Need(1 + len));
    std::string s(reinterpret_cast<const char*>(in_.data()) + 1, len);
    in_.Skip(1 + len);
    return s;
  }

  Status Header() {
    MOAT_RETURN_IF_ERROR(in_.Need(8));
    if (std::memcmp(in_.data(), "QEVM", 4) != 0) return Malformed("no QEVM magic");
    if (Be32(in_.data() + 4) != 3) {
      return Malformed("version " + std::to_string(Be32(in_.data() + 4)) + " (expected 3)");
    }
    MOAT_RETURN_IF_ERROR(Copy(8));
    MOAT_RETURN_IF_ERROR(in_.Need(1));
    if (in_.data()[0] != kConfiguration) return Status::Ok();
    MOAT_RETURN_IF_ERROR(in_.Need(5));
    uint32_t name_len = Be32(in_.data() + 1);
    if (name_len > 256) return Malformed("machine name of " + std::to_string(name_len) + " bytes");
    MOAT_RETURN_IF_ERROR(Copy(5 + name_len));
    for (;;) {
      MOAT_RETURN_IF_ERROR(in_.Need(2));
      if (in_.data()[0] != kSubsection) return Status::Ok();
      size_t len = in_.data()[1];
      MOAT_RETURN_IF_ERROR(in_.Need(2 + len + 4));
      std::string name(reinterpret_cast<const char*>(in_.data()) + 2, len);
      MOAT_RETURN_IF_ERROR(Copy(2 + len + 4));
      if (name == "configuration/capabilities") {
        MOAT_RETURN_IF_ERROR(in_.Need(4));
        uint32_t count = Be32(in_.data());
        if (count > 64) return Malformed(std::to_string(count) + " capabilities");
        MOAT_RETURN_IF_ERROR(Copy(4));
        for (uint32_t i = 0; i < count; ++i) {
          MOAT_RETURN_IF_ERROR(in_.Need(1));
          size_t cap_len = in_.data()[0];
          MOAT_RETURN_IF_ERROR(in_.Need(1 + cap_len));
          std::string_view cap(reinterpret_cast<const char*>(in_.data()) + 1, cap_len);
          if (cap == "x-ignore-shared") ignore_shared_ = true;
          MOAT_RETURN_IF_ERROR(Copy(1 + cap_len));
        }
      } else if (name == "configuration/target-page-bits") {
        MOAT_RETURN_IF_ERROR(in_.Need(4));
        if (Be32(in_.data()) != 12) {
          return Malformed("target page bits " + std::to_string(Be32(in_.data())));
        }
        MOAT_RETURN_IF_ERROR(Copy(4));
      } else if (name == "configuration/uuid") {
        MOAT_RETURN_IF_ERROR(Copy(16));
      } else {
        return Malformed("unknown configuration subsection \"" + name + "\"");
      }
    }
  }

  // The block list of the first "ram" section: copied; checks the block's size.
  Status BlockList(uint64_t total) {
    while (total > 0) {
      MOAT_ASSIGN_OR_RETURN(std::string id, ReadIdstr());
      MOAT_RETURN_IF_ERROR(in_.Need(ignore_shared_ ? 16 : 8));
      uint64_t used = Be64(in_.data());
      if (used > total) return Malformed("RAM block sizes exceed the total");
      total -= used;
      if (id == o_.block) {
        if (used != o_.block_bytes) {
          return Malformed("RAM block \"" + id + "\" is " + std::to_string(used) +
                           " bytes, expected " + std::to_string(o_.block_bytes));
        }
        block_listed_ = true;
      }
      uint8_t len = static_cast<uint8_t>(id.size());
      MOAT_RETURN_IF_ERROR(out_.Write(&len, 1));
      MOAT_RETURN_IF_ERROR(out_.Write(id.data(), id.size()));
      MOAT_RETURN_IF_ERROR(Copy(ignore_shared_ ? 16 : 8));
    }
    return Status::Ok();
  }

  Status RamPayload(bool start) {
    for (;;) {
      MOAT_RETURN_IF_ERROR(in_.Need(8));
      uint64_t header = Be64(in_.data());
      uint64_t flags = header & kFlagMask;
      uint64_t offset = header & ~kFlagMask;
      if (flags == kFlagMemSize) {
        if (!start) return Malformed("RAM block list outside the first ram section");
        MOAT_RETURN_IF_ERROR(Copy(8));
        MOAT_RETURN_IF_ERROR(BlockList(offset));
        if (!block_listed_) return Malformed("no RAM block \"" + o_.block + "\" in the stream");
        continue;
      }
      if (flags == kFlagEos) {
        MOAT_RETURN_IF_ERROR(Copy(8));
        break;
      }
      uint64_t kind = flags & ~kFlagContinue;
      if (kind != kFlagZero && kind != kFlagPage) {
        return Malformed("unsupported RAM record flags " + Hex(flags, 1) +
                         " (compression, xbzrle and multifd are not used)");
      }
      in_.Skip(8);
      if ((flags & kFlagContinue) == 0) {
        MOAT_ASSIGN_OR_RETURN(current_, ReadIdstr());
        have_current_ = true;
      } else if (!have_current_) {
        return Malformed("a RAM record continues no block");
      }
      size_t body = kind == kFlagPage ? kTargetPageSize : 1;
      MOAT_RETURN_IF_ERROR(in_.Need(body));
      if (current_ == o_.block) {
        if (!block_listed_) return Malformed("a page of an unlisted block");
        if (offset > o_.block_bytes - kTargetPageSize) {
          return Malformed("page offset " + std::to_string(offset) + " outside the block");
        }
        if (kind == kFlagPage) {
          MOAT_RETURN_IF_ERROR(mem_.Page(offset, in_.data()));
          ++stats_.pages;
        } else {
          MOAT_RETURN_IF_ERROR(mem_.Fill(offset, in_.data()[0]));
          ++stats_.zero_pages;
        }
        in_.Skip(body);
        continue;
      }
      // Another block's record (the BIOS ROM): kept, naming its block explicitly, since the
      // record before it in the output may be of another block.
      std::array<uint8_t, 8 + 1 + 255> rec;
      PutBe64(rec.data(), offset | kind);
      rec[8] = static_cast<uint8_t>(current_.size());
      std::memcpy(rec.data() + 9, current_.data(), current_.size());
      MOAT_RETURN_IF_ERROR(out_.Write(rec.data(), 9 + current_.size()));
      MOAT_RETURN_IF_ERROR(Copy(body));
    }
    // The section footer, when the machine type sends them.
    MOAT_RETURN_IF_ERROR(in_.Need(1));
    if (in_.data()[0] == kSectionFooter) {
      MOAT_RETURN_IF_ERROR(in_.Need(5));
      if (Be32(in_.data() + 1) != *ram_id_) return Malformed("footer of another section");
      MOAT_RETURN_IF_ERROR(Copy(5));
    }
    return Status::Ok();
  }

  Status Passthrough() {
    for (;;) {
      if (in_.available() > 0) MOAT_RETURN_IF_ERROR(Copy(in_.available()));
      MOAT_ASSIGN_OR_RETURN(size_t got, in_.Fill());
      if (got == 0) break;
    }
    return out_.Flush();
  }

  const RamSplitOptions& o_;
  MemoryOutput mem_;
  Input in_;
  StateOutput out_;
  RamSplitStats stats_;
  std::optional<uint32_t> ram_id_;
  bool ram_ended_ = false;  // the "ram" END section was seen
  bool ignore_shared_ = false;
  bool block_listed_ = false;
  std::string current_;
  bool have_current_ = false;
};

}  // namespace

Result<RamSplitStats> SplitRamFromStream(int in_fd, int state_fd, int memory_fd,
                                         const RamSplitOptions& options) {
  if (options.block.empty() || options.block.size() > 255) {
    return InvalidArgument("ram split: block name must be 1..255 bytes");
  }
  if (options.block_bytes == 0 || options.block_bytes % kTargetPageSize != 0) {
    return InvalidArgument("ram split: block size must be a positive multiple of the page size");
  }
  if (options.read_buffer_bytes < kMinInputBuffer) {
    return InvalidArgument("ram split: read buffer must be at least 8 KiB");
  }
  if (::ftruncate(memory_fd, static_cast<off_t>(options.block_bytes)) < 0) {
    return ErrnoError("ftruncate(memory file)");
  }
  Splitter s(in_fd, state_fd, memory_fd, options);
  return s.Run();
}

}  // namespace moat::vmm::qemu

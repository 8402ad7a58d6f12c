#include "vmm/qemu/ram_split.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.h"

namespace moat::vmm::qemu {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kPage = kTargetPageSize;
constexpr uint64_t kBlockBytes = 64 * kPage;
constexpr uint64_t kBiosBytes = 16 * kPage;

std::string Be32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 3; i >= 0; --i, v >>= 8) s[i] = static_cast<char>(v & 0xff);
  return s;
}
std::string Be64(uint64_t v) {
  return Be32(static_cast<uint32_t>(v >> 32)) + Be32(static_cast<uint32_t>(v));
}
std::string Idstr(const std::string& s) {
  return std::string(1, static_cast<char>(s.size())) + s;
}
std::string PageOf(char c) {
  return std::string(kPage, c);
}

// Builds a stream the way QEMU 7.2 writes one (x-ignore-shared, footers) and, alongside, the
// state the splitter must make of it. QEMU 10.0 adds SwitchoverStart() before the ram END.
class StreamBuilder {
 public:
  StreamBuilder() {
    Both("QEVM" + Be32(3));
    Both("\x07" + Be32(7) + "microvm");
    Both("\x05" + Idstr("configuration/capabilities") + Be32(1) + Be32(1) +
         Idstr("x-ignore-shared"));
  }
  void RamStart(uint64_t block_bytes = kBlockBytes) {
    Both("\x01" + Be32(2) + Idstr("ram") + Be32(0) + Be32(4));
    Both(Be64((block_bytes + kBiosBytes) | 0x04));
    Both(Idstr("mem") + Be64(block_bytes) + Be64(0));
    Both(Idstr("pc.bios") + Be64(kBiosBytes) + Be64(0xffff0000));
    EndRamSection();
  }
  void RamPart(char type = 0x02) { Both(std::string(1, type) + Be32(2)); }
  void EndRamSection() { Both(Be64(0x10) + "\x7e" + Be32(2)); }
  // QEMU_VM_COMMAND: u8 0x08, be16 cmd, be16 len, len bytes. 10.0's MIG_CMD_SWITCHOVER_START is
  // cmd 0x0b, len 0 (copied to the state as it is).
  void Command(uint16_t cmd, const std::string& data = "") {
    Both("\x08" + Be32(uint32_t{cmd} << 16 | static_cast<uint32_t>(data.size())) + data);
  }
  void SwitchoverStart() { Command(0x0b); }
  // A page record of "mem" (left out of the state); continue_block: CONTINUE, no idstr.
  void MemPage(uint64_t offset, const std::string& data, bool continue_block = false) {
    stream += Be64(offset | 0x08 | (continue_block ? 0x20 : 0)) +
              (continue_block ? "" : Idstr("mem")) + data;
  }
  void MemZero(uint64_t offset, char fill = 0) {
    stream += Be64(offset | 0x02) + Idstr("mem") + std::string(1, fill);
  }
  // A page of the BIOS block: kept, always with its idstr in the state.
  void BiosPage(uint64_t offset, const std::string& data, bool continue_block = false) {
    stream += Be64(offset | 0x08 | (continue_block ? 0x20 : 0)) +
              (continue_block ? "" : Idstr("pc.bios")) + data;
    state += Be64(offset | 0x08) + Idstr("pc.bios") + data;
  }
  void Devices() {
    Both("\x04" + Be32(0) + Idstr("timer") + Be32(0) + Be32(2) + std::string(24, '\x11') + "\x7e" +
         Be32(0));
    Both(std::string(1, '\0'));  // EOF
    Both("\x06" + Be32(20) + R"({"page_size": 4096})" + std::string(1, '\0'));
  }
  void Both(const std::string& s) {
    stream += s;
    state += s;
  }

  std::string stream, state;
};

UniqueFd Memfd(const char* name) {
  return UniqueFd(::memfd_create(name, MFD_CLOEXEC));
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[65536];
  for (off_t off = 0;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, off);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    off += n;
  }
  return out;
}

struct Split {
  Result<RamSplitStats> result = RamSplitStats{};
  std::string state, memory;
};

// Feeds `stream` through a pipe in uneven chunks (so records straddle reads) and splits it.
Split RunSplit(const std::string& stream, RamSplitOptions o = {}) {
  ::signal(SIGPIPE, SIG_IGN);  // the writer of a refused stream gets EPIPE, like QEMU would
  if (o.block.empty()) o.block = "mem";
  if (o.block_bytes == 0) o.block_bytes = kBlockBytes;
  int p[2];
  EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  std::thread writer([&stream, fd = std::move(wr)] {
    size_t chunk = 1;
    for (size_t off = 0; off < stream.size();) {
      size_t n = std::min(chunk, stream.size() - off);
      ssize_t w = ::write(fd.get(), stream.data() + off, n);
      if (w <= 0) return;
      off += static_cast<size_t>(w);
      chunk = chunk * 7 % 9001 + 1;
    }
  });
  UniqueFd state = Memfd("state"), mem = Memfd("mem");
  Split s;
  s.result = SplitRamFromStream(rd.get(), state.get(), mem.get(), o);
  rd.Reset();  // a writer blocked on a failed split gets EPIPE
  writer.join();
  s.state = ReadAll(state.get());
  s.memory = ReadAll(mem.get());
  return s;
}

TEST(RamSplit, PagesGoToTheFileEverythingElseToTheState) {
  StreamBuilder b;
  b.RamStart();
  b.RamPart();
  b.MemPage(0, PageOf('a'));
  b.MemPage(3 * kPage, PageOf('b'), /*continue_block=*/true);
  b.MemZero(kPage);
  b.BiosPage(0, PageOf('c'));
  b.BiosPage(kPage, PageOf('d'), /*continue_block=*/true);  // continues pc.bios
  b.MemPage(63 * kPage, PageOf('e'));
  b.EndRamSection();
  b.RamPart(0x03);  // END: page 0 turned out zero after all, page 5 is all 0x7f
  b.MemZero(0);
  b.MemZero(5 * kPage, '\x7f');
  b.EndRamSection();
  b.Devices();

  Split s = RunSplit(b.stream);
  ASSERT_TRUE(s.result.ok()) << s.result.status().ToString();
  EXPECT_EQ(s.state, b.state);
  ASSERT_EQ(s.memory.size(), kBlockBytes);
  EXPECT_EQ(s.memory.substr(0, kPage), std::string(kPage, '\0'));
  EXPECT_EQ(s.memory.substr(kPage, kPage), std::string(kPage, '\0'));
  EXPECT_EQ(s.memory.substr(3 * kPage, kPage), PageOf('b'));
  EXPECT_EQ(s.memory.substr(5 * kPage, kPage), PageOf('\x7f'));
  EXPECT_EQ(s.memory.substr(63 * kPage, kPage), PageOf('e'));
  EXPECT_EQ(s.result->pages, 3u);
  EXPECT_EQ(s.result->zero_pages, 3u);
  EXPECT_EQ(s.result->state_bytes, b.state.size());
  EXPECT_EQ(s.result->stream_bytes, b.stream.size());
}

// A stream of `pages` pages of "mem", each holding its number and, in its last byte, a value
// derived from it; NumberedPagesOk checks a memory file against it.
StreamBuilder NumberedPages(uint64_t pages) {
  StreamBuilder b;
  b.RamStart(pages * kPage);
  b.RamPart();
  for (uint64_t i = 0; i < pages; ++i) {
    std::string page(kPage, '\0');
    std::memcpy(page.data(), &i, sizeof i);
    page[kPage - 1] = static_cast<char>(i * 31);
    b.MemPage(i * kPage, page, /*continue_block=*/i > 0);
  }
  b.EndRamSection();
  b.Devices();
  return b;
}

::testing::AssertionResult NumberedPagesOk(const std::string& memory, uint64_t pages) {
  if (memory.size() != pages * kPage) {
    return ::testing::AssertionFailure() << "memory file of " << memory.size() << " bytes";
  }
  for (uint64_t i = 0; i < pages; ++i) {
    uint64_t got;
    std::memcpy(&got, memory.data() + i * kPage, sizeof got);
    if (got != i || memory[i * kPage + kPage - 1] != static_cast<char>(i * 31)) {
      return ::testing::AssertionFailure() << "page " << i << " holds page " << got;
    }
  }
  return ::testing::AssertionSuccess();
}

// A memfd holding `data`, read from its start (a file: big reads, unlike a pipe).
UniqueFd MemfdWith(const std::string& data) {
  UniqueFd fd = Memfd("stream");
  EXPECT_EQ(::write(fd.get(), data.data(), data.size()), static_cast<ssize_t>(data.size()));
  EXPECT_EQ(::lseek(fd.get(), 0, SEEK_SET), 0);
  return fd;
}

TEST(RamSplit, ManyPagesOverSeveralBufferFills) {
  // 8 MiB of pages through a pipe: the input buffer (4 MiB) is refilled and moved.
  StreamBuilder b = NumberedPages(2048);
  Split s = RunSplit(b.stream, {.block = "mem", .block_bytes = 2048 * kPage});
  ASSERT_TRUE(s.result.ok()) << s.result.status().ToString();
  EXPECT_EQ(s.state, b.state);
  EXPECT_TRUE(NumberedPagesOk(s.memory, 2048));
}

TEST(RamSplit, ZeroPagesStayHoles) {
  StreamBuilder b;
  b.RamStart();
  b.RamPart();
  for (uint64_t i = 0; i < 64; ++i) b.MemZero(i * kPage);
  b.MemPage(10 * kPage, PageOf('z'));
  b.EndRamSection();
  b.Devices();
  UniqueFd in = MemfdWith(b.stream), state = Memfd("state"), mem = Memfd("mem");
  auto r = SplitRamFromStream(in.get(), state.get(), mem.get(),
                              {.block = "mem", .block_bytes = kBlockBytes});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // One page of data in a 64-page file: the rest was never written (shmem keeps 4 KiB holes).
  EXPECT_EQ(::lseek(mem.get(), 0, SEEK_DATA), static_cast<off_t>(10 * kPage));
  EXPECT_EQ(::lseek(mem.get(), 10 * kPage, SEEK_HOLE), static_cast<off_t>(11 * kPage));
}

TEST(RamSplit, QueuedPagesAreWrittenBeforeTheBufferMoves) {
  // Big reads (a file, not a pipe) into a small buffer: every refill moves unread bytes over
  // pages still queued for writing, so they must be written first.
  StreamBuilder b = NumberedPages(512);
  for (size_t buffer : {size_t{8192}, size_t{10000}, size_t{65536}}) {
    UniqueFd in = MemfdWith(b.stream), state = Memfd("state"), mem = Memfd("mem");
    auto r = SplitRamFromStream(
        in.get(), state.get(), mem.get(),
        {.block = "mem", .block_bytes = 512 * kPage, .read_buffer_bytes = buffer});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(NumberedPagesOk(ReadAll(mem.get()), 512)) << "buffer " << buffer;
    EXPECT_EQ(ReadAll(state.get()), b.state);
  }
}

Status SplitError(const std::string& stream, RamSplitOptions o = {}) {
  Split s = RunSplit(stream, std::move(o));
  return s.result.ok() ? Status::Ok() : s.result.status();
}

TEST(RamSplit, RefusesWhatItDoesNotKnow) {
  {
    EXPECT_THAT(SplitError("QEMU" + Be32(3)).message(), HasSubstr("no QEVM magic"));
    EXPECT_THAT(SplitError("QEVM" + Be32(2)).message(), HasSubstr("version 2"));
  }
  {
    StreamBuilder b;
    b.Both("\x05" + Idstr("configuration/something-new") + Be32(1));
    EXPECT_THAT(SplitError(b.stream).message(), HasSubstr("something-new"));
  }
  {
    StreamBuilder b;
    b.RamStart();
    b.RamPart();
    b.stream += Be64(0x40) + Idstr("mem");  // XBZRLE
    EXPECT_THAT(SplitError(b.stream).message(), HasSubstr("unsupported RAM record flags 0x40"));
  }
  {
    StreamBuilder b;
    b.RamStart();
    b.RamPart();
    b.MemPage(kBlockBytes, PageOf('x'));  // one past the block
    EXPECT_THAT(SplitError(b.stream).message(), HasSubstr("outside the block"));
  }
  {
    StreamBuilder b;
    b.RamStart(2 * kBlockBytes);
    EXPECT_THAT(SplitError(b.stream).message(), HasSubstr("expected 262144"));
  }
  {
    StreamBuilder b;
    b.RamStart();
    b.RamPart();
    b.stream += Be64(0x08 | 0x20) + PageOf('x');  // CONTINUE with nothing before
    EXPECT_THAT(SplitError(b.stream).message(), HasSubstr("continues no block"));
  }
  {
    StreamBuilder b;
    b.RamStart();
    b.RamPart();
    b.MemPage(0, PageOf('x').substr(0, 100));  // ends in the middle of a page
    EXPECT_THAT(SplitError(b.stream).message(), HasSubstr("ends early"));
  }
  {
    StreamBuilder b;  // the block is not in the stream at all
    b.RamStart();
    EXPECT_THAT(SplitError(b.stream, {.block = "other", .block_bytes = kBlockBytes}).message(),
                HasSubstr("no RAM block \"other\""));
  }
  {
    StreamBuilder b;
    b.RamStart();
    b.Devices();
    b.stream += std::string(100000, 'x');
    Status s = SplitError(b.stream,
                          {.block = "mem", .block_bytes = kBlockBytes, .max_state_bytes = 50000});
    EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted) << s.ToString();
  }
  EXPECT_EQ(SplitError("", {.block = "mem", .block_bytes = 100}).code(),
            ErrorCode::kInvalidArgument);
}

TEST(RamSplit, Qemu10SwitchoverStartBeforeTheRamEnd) {
  // QEMU 10.0 writes MIG_CMD_SWITCHOVER_START after the last PART and before the END, and the
  // END may carry pages: they must reach the memory file, not the state.
  StreamBuilder b;
  b.RamStart();
  b.RamPart();
  b.MemPage(0, PageOf('a'));
  b.BiosPage(0, PageOf('c'));
  b.EndRamSection();
  size_t command_at = b.stream.size(), state_command_at = b.state.size();
  b.SwitchoverStart();
  b.RamPart(0x03);
  b.MemPage(2 * kPage, PageOf('f'));
  b.MemPage(3 * kPage, PageOf('g'), /*continue_block=*/true);
  b.MemZero(0);
  b.BiosPage(kPage, PageOf('d'));
  b.MemPage(63 * kPage, PageOf('h'));
  b.EndRamSection();
  b.Devices();
  ASSERT_EQ(b.stream.substr(command_at, 5), std::string("\x08\x00\x0b\x00\x00", 5));

  Split s = RunSplit(b.stream);
  ASSERT_TRUE(s.result.ok()) << s.result.status().ToString();
  EXPECT_EQ(s.state, b.state);
  EXPECT_EQ(s.state.substr(state_command_at, 5), std::string("\x08\x00\x0b\x00\x00", 5));
  ASSERT_EQ(s.memory.size(), kBlockBytes);
  EXPECT_EQ(s.memory.substr(0, kPage), std::string(kPage, '\0'));
  EXPECT_EQ(s.memory.substr(2 * kPage, kPage), PageOf('f'));
  EXPECT_EQ(s.memory.substr(3 * kPage, kPage), PageOf('g'));
  EXPECT_EQ(s.memory.substr(63 * kPage, kPage), PageOf('h'));
  EXPECT_EQ(s.result->pages, 4u);
  EXPECT_EQ(s.result->zero_pages, 1u);
  EXPECT_EQ(s.result->stream_bytes, b.stream.size());
  // Not one page of "mem" in the state.
  for (char c : {'a', 'f', 'g', 'h'}) EXPECT_EQ(s.state.find(PageOf(c)), std::string::npos) << c;
}

TEST(RamSplit, DeviceSectionsBeginAtAnyFullOrStartSectionOrEof) {
  {
    StreamBuilder b;  // EOF straight after the ram END
    b.RamStart();
    b.RamPart();
    b.MemPage(kPage, PageOf('a'));
    b.EndRamSection();
    b.RamPart(0x03);
    b.EndRamSection();
    b.Both(std::string(1, '\0') + "anything after EOF is copied");
    Split s = RunSplit(b.stream);
    ASSERT_TRUE(s.result.ok()) << s.result.status().ToString();
    EXPECT_EQ(s.state, b.state);
    EXPECT_EQ(s.memory.substr(kPage, kPage), PageOf('a'));
  }
  {
    StreamBuilder b;  // the START of another section: from there on, copied as it is
    b.RamStart();
    b.RamPart();
    b.EndRamSection();
    b.Both("\x01" + Be32(7) + Idstr("block") + Be32(0) + Be32(1) + "\x09\x08\x07" +
           std::string(1, '\0'));
    Split s = RunSplit(b.stream);
    ASSERT_TRUE(s.result.ok()) << s.result.status().ToString();
    EXPECT_EQ(s.state, b.state);
  }
}

TEST(RamSplit, RefusesUnknownCommandsAndSections) {
  // Each case: a stream that is fine up to `at`, then what the splitter must refuse there.
  auto refused = [](StreamBuilder b, const std::string& bad) {
    size_t at = b.stream.size();
    b.stream += bad;
    Status s = SplitError(b.stream);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
    EXPECT_THAT(s.message(), HasSubstr("at stream offset " + std::to_string(at)));
    return s.message();
  };
  StreamBuilder in_ram;  // between the ram START/PARTs and the ram END
  in_ram.RamStart();
  in_ram.RamPart();
  in_ram.MemPage(0, PageOf('a'));
  in_ram.EndRamSection();
  StreamBuilder after_end = in_ram;
  after_end.SwitchoverStart();
  after_end.RamPart(0x03);
  after_end.EndRamSection();

  std::string cmd = std::string("\x08\x00\x0c\x00\x00", 5);
  EXPECT_THAT(refused(in_ram, cmd), HasSubstr("unsupported QEMU_VM_COMMAND 0x000c (len 0)"));
  cmd = std::string("\x08\x00\x0b\x00\x02\x00\x00", 7);  // SWITCHOVER_START with a payload
  EXPECT_THAT(refused(in_ram, cmd), HasSubstr("unsupported QEMU_VM_COMMAND 0x000b (len 2)"));
  cmd = std::string("\x08\x00\x0b\x00\x00", 5);
  EXPECT_THAT(refused(after_end, cmd), HasSubstr("SWITCHOVER_START outside"));
  EXPECT_THAT(refused(StreamBuilder(), cmd), HasSubstr("SWITCHOVER_START outside"));
  for (char type : {'\x05', '\x06', '\x07', '\x09', '\x7e', '\xff'}) {
    std::string hex = "0x" + std::string(1, "0123456789abcdef"[(type >> 4) & 0xf]) +
                      "0123456789abcdef"[type & 0xf];
    EXPECT_THAT(refused(in_ram, std::string(1, type) + Be32(2)), HasSubstr("section type " + hex));
    EXPECT_THAT(refused(after_end, std::string(1, type) + Be32(2)),
                HasSubstr("section type " + hex));
  }
  EXPECT_THAT(refused(in_ram, "\x02" + Be32(3) + Be64(0x10)),
              HasSubstr("a PART section of section id 3, not \"ram\" (2)"));
  EXPECT_THAT(refused(in_ram, "\x03" + Be32(0) + Be64(0x10)),
              HasSubstr("an END section of section id 0"));
  EXPECT_THAT(refused(StreamBuilder(), "\x02" + Be32(2) + Be64(0x10)),
              HasSubstr("before the \"ram\" START section"));
  EXPECT_THAT(refused(after_end, "\x02" + Be32(2) + Be64(0x10)),
              HasSubstr("a PART section of \"ram\" after its END section"));
  EXPECT_THAT(refused(in_ram, "\x01" + Be32(2) + Idstr("ram") + Be32(0) + Be32(4)),
              HasSubstr("a second \"ram\" START section"));
  EXPECT_THAT(refused(in_ram, "\x04" + Be32(2) + Idstr("ram") + Be32(0) + Be32(4)),
              HasSubstr("a FULL \"ram\" section"));
}

TEST(RamSplit, TimesOutAndCancels) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);  // held open, never written: QEMU hanging
  UniqueFd state = Memfd("state"), mem = Memfd("mem");
  auto r = SplitRamFromStream(
      rd.get(), state.get(), mem.get(),
      {.block = "mem", .block_bytes = kBlockBytes, .timeout = std::chrono::milliseconds(100)});
  EXPECT_EQ(r.status().code(), ErrorCode::kDeadlineExceeded);

  int c[2];
  ASSERT_EQ(::pipe2(c, O_CLOEXEC), 0);
  UniqueFd cancel_rd(c[0]), cancel_wr(c[1]);
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    cancel_wr.Reset();  // EOF makes the read end readable
  });
  r = SplitRamFromStream(
      rd.get(), state.get(), mem.get(),
      {.block = "mem", .block_bytes = kBlockBytes, .cancel_fd = cancel_rd.get()});
  canceller.join();
  EXPECT_EQ(r.status().code(), ErrorCode::kCancelled);
}

}  // namespace
}  // namespace moat::vmm::qemu

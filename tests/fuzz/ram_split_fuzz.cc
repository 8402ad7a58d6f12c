// libFuzzer target for the RAM splitter: it parses the migration stream QEMU writes, and QEMU is
// untrusted. Checks that it never crashes, never writes the memory file past the block, and
// never writes more state than its cap.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/unique_fd.h"
#include "vmm/qemu/ram_split.h"

using moat::UniqueFd;
using moat::vmm::qemu::RamSplitOptions;
using moat::vmm::qemu::SplitRamFromStream;

namespace {

off_t SizeOf(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) std::abort();
  return st.st_size;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The stream comes from a memfd (a pipe would need a writer thread); a file reads the same way.
  UniqueFd in(::memfd_create("stream", MFD_CLOEXEC));
  UniqueFd state(::memfd_create("state", MFD_CLOEXEC));
  UniqueFd mem(::memfd_create("mem", MFD_CLOEXEC));
  if (!in || !state || !mem) std::abort();
  for (size_t off = 0; off < size;) {
    ssize_t w = ::write(in.get(), data + off, size - off);
    if (w <= 0) std::abort();
    off += static_cast<size_t>(w);
  }
  ::lseek(in.get(), 0, SEEK_SET);
  // A small buffer: refills move unread bytes over queued page writes, as with big streams.
  RamSplitOptions o{.block = "mem",
                    .block_bytes = 16 * 4096,
                    .max_state_bytes = 1 << 16,
                    .read_buffer_bytes = 8192};
  auto r = SplitRamFromStream(in.get(), state.get(), mem.get(), o);
  if (SizeOf(mem.get()) != static_cast<off_t>(o.block_bytes)) std::abort();
  if (SizeOf(state.get()) > static_cast<off_t>(o.max_state_bytes)) std::abort();
  if (r.ok() && r->pages + r->zero_pages > size / 9 + 1) std::abort();
  return 0;
}

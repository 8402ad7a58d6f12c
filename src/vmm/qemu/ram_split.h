// Memory-file snapshots on QEMU 7.2 and 10.0: splits one RAM block out of a precopy migration
// stream.
//
// Without `mapped-ram` (9.0; not used), a migration of a VM whose RAM is private (every
// sandbox: MAP_PRIVATE over a template's memory file) carries every page in the stream, and
// loading it copies every page into the new VM's fresh memory. SplitRamFromStream reads such a
// stream as QEMU writes it (a pipe) and writes
//   - the pages of the RAM block `block` into `memory_fd`, at their offsets in the block (a
//     sparse file the size of the block: zero pages stay holes), and
//   - everything else into `state_fd`: the same stream with that block's page records left out.
// A VM restored with that file as its `memory-backend-file` (share=off, like a template clone)
// and `migrate-incoming` from the state (x-ignore-shared) starts with exactly the saved RAM but
// loads none of it: it maps the file, and several VMs restored from one file share its clean
// pages.
//
// The stream comes from QEMU, which is untrusted: every length and offset is checked against
// the block, idstrs are bounded by their u8 length, the state output is capped, and anything the
// parser does not know ends in an error (never a guess). Format (QEMU 7.2 and 10.0,
// migration/savevm.c and ram.c; docs/qemu10.md §4): "QEVM" be32 3; [0x07 configuration: be32
// len, machine name, subsections 0x05]; sections START 0x01 / FULL 0x04 (be32 id, u8 len +
// idstr, be32 instance, be32 version), PART 0x02 / END 0x03 (be32 id), each followed by 0x7e +
// be32 id (footer); the "ram" section's payload is records: be64 (offset | flags), flags
// MEM_SIZE 0x04 (the block list), ZERO 0x02 (+ 1 fill byte), PAGE 0x08 (+ 4096 bytes), CONTINUE
// 0x20 (same block as the record before; otherwise u8 len + idstr), EOS 0x10. The "ram" START,
// PARTs and END come first; 10.0 adds QEMU_VM_COMMAND 0x08 MIG_CMD_SWITCHOVER_START (be16 cmd
// 0x000b, be16 len 0) after the last PART, before END, which is copied. Then the device
// sections (FULL, or START of another section) or EOF 0x00: from there on everything is copied
// as it is. Anything else where a section is expected (another section type or command, a PART
// or END of another section, ram sections out of order) is an error.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace moat::vmm::qemu {

struct RamSplitOptions {
  std::string block;         // the RAMBlock idstr (the memory backend's id)
  uint64_t block_bytes = 0;  // its size: page offsets past it are an error
  // Bounds what a (hostile) QEMU can make the host write or wait for.
  uint64_t max_state_bytes = uint64_t{256} << 20;
  std::chrono::milliseconds timeout{30000};
  // Readable: stop at once (Cancelled). -1: none.
  int cancel_fd = -1;
  // The input buffer (at least 8 KiB: a record must fit). Queued page writes point into it and
  // are flushed before its unread bytes move to the front; tests make it small to exercise that.
  size_t read_buffer_bytes = size_t{4} << 20;
};

struct RamSplitStats {
  uint64_t pages = 0;       // pages of `block` written to the memory file
  uint64_t zero_pages = 0;  // pages of `block` left (or made) zero
  uint64_t state_bytes = 0;
  uint64_t stream_bytes = 0;
  // Time spent waiting for QEMU to write more (the rest is parsing and writing the files).
  std::chrono::microseconds waited{0};
};

inline constexpr uint64_t kTargetPageSize = 4096;  // x86-64 TARGET_PAGE_SIZE

// Reads `in_fd` to its end. `memory_fd` must be a new, empty file (it is truncated to
// block_bytes); `state_fd` is written from its current position. On error the outputs hold
// garbage and the caller removes them.
Result<RamSplitStats> SplitRamFromStream(int in_fd, int state_fd, int memory_fd,
                                         const RamSplitOptions& options);

}  // namespace moat::vmm::qemu

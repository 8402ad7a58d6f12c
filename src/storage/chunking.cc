#include "storage/chunking.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/unique_fd.h"

namespace moat::storage {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

// A byte range [begin, end) of a file.
struct Range {
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Reads exactly `length` bytes at `offset` into `out`; a file that ends first is an error (it
// changed while being read).
Status PreadFull(int fd, const std::string& path, uint64_t offset, char* out, uint64_t length) {
  uint64_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd, out + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("pread(" + path + ", offset " + std::to_string(offset + done) + ")");
    }
    if (n == 0) {
      return FailedPrecondition("read(" + path + "): the file ends at byte " +
                                std::to_string(offset + done) + ", before byte " +
                                std::to_string(offset + length) + " (changed while read?)");
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Result<std::pair<UniqueFd, uint64_t>> OpenRegular(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("fstat(" + path + ")");
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  return std::pair<UniqueFd, uint64_t>(std::move(fd), static_cast<uint64_t>(st.st_size));
}

// The data (non-hole) ranges of `fd` within [begin, end), from SEEK_DATA/SEEK_HOLE. A filesystem
// that does not support them reports the whole file as data (or fails with EINVAL/EOPNOTSUPP,
// and then the whole range is taken as data).
Result<std::vector<Range>> DataRanges(int fd, const std::string& path, uint64_t begin,
                                      uint64_t end) {
  std::vector<Range> out;
  uint64_t pos = begin;
  while (pos < end) {
    off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data at or after pos: the rest is a hole
      if (errno == EINVAL || errno == EOPNOTSUPP) {
        out.push_back({pos, end});
        break;
      }
      return ErrnoError("lseek(" + path + ", SEEK_DATA, " + std::to_string(pos) + ")");
    }
    uint64_t data_begin = static_cast<uint64_t>(data);
    if (data_begin >= end) break;
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      return ErrnoError("lseek(" + path + ", SEEK_HOLE, " + std::to_string(data_begin) + ")");
    }
    uint64_t data_end = std::min(end, static_cast<uint64_t>(hole));
    if (data_end <= data_begin) {  // cannot happen on a file that stays put; never loop on it
      out.push_back({data_begin, end});
      break;
    }
    out.push_back({data_begin, data_end});
    pos = data_end;
  }
  return out;
}

}  // namespace

std::string ChunkHash(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // SHA-256 of an in-memory buffer fails only when OpenSSL cannot allocate its context.
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) std::abort();
  std::string out;
  out.reserve(2 * len);
  for (unsigned i = 0; i < len; ++i) {
    out += kHexDigits[md[i] >> 4];
    out += kHexDigits[md[i] & 15];
  }
  return out;
}

uint64_t ChunkMap::ChunkLength(size_t index) const {
  uint64_t begin = static_cast<uint64_t>(index) * kChunkSize;
  if (begin >= size) return 0;
  return std::min(kChunkSize, size - begin);
}

uint64_t ChunkMap::NonZeroBytes() const {
  uint64_t total = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i]) total += ChunkLength(i);
  }
  return total;
}

bool IsValidChunkHash(std::string_view hash) {
  return hash.size() == 64 && std::all_of(hash.begin(), hash.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string ChunkKey(std::string_view hash) {
  return "chunks/" + std::string(hash);
}

bool IsAllZero(std::string_view data) {
  // memcmp against a page of zeros: libc's memcmp is vectorised, and the page stays in L1.
  alignas(64) static const char kZeroPage[4096] = {};
  const char* p = data.data();
  size_t left = data.size();
  while (left >= sizeof kZeroPage) {
    if (std::memcmp(p, kZeroPage, sizeof kZeroPage) != 0) return false;
    p += sizeof kZeroPage;
    left -= sizeof kZeroPage;
  }
  return left == 0 || std::memcmp(p, kZeroPage, left) == 0;
}

Result<ChunkMap> ChunkFile(const std::string& path) {
  MOAT_ASSIGN_OR_RETURN(auto opened, OpenRegular(path));
  auto& [fd, size] = opened;
  ChunkMap map;
  map.size = size;
  const uint64_t count = (size + kChunkSize - 1) / kChunkSize;
  map.chunks.resize(count);
  std::string buffer;  // one chunk, reused
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t begin = i * kChunkSize;
    const uint64_t length = map.ChunkLength(i);
    MOAT_ASSIGN_OR_RETURN(auto ranges, DataRanges(fd.get(), path, begin, begin + length));
    if (ranges.empty()) continue;  // wholly in a hole: zero, and nothing read
    // Holes inside the chunk are zero-filled here rather than read.
    buffer.assign(length, '\0');
    for (const Range& r : ranges) {
      MOAT_RETURN_IF_ERROR(
          PreadFull(fd.get(), path, r.begin, buffer.data() + (r.begin - begin), r.end - r.begin));
    }
    if (IsAllZero(buffer)) continue;
    map.chunks[i] = ChunkHash(buffer);
  }
  return map;
}

Result<std::string> ReadChunk(const std::string& path, const ChunkMap& map, size_t index) {
  if (index >= map.chunks.size()) {
    return InvalidArgument("chunk " + std::to_string(index) + " of " + path + ": the map has " +
                           std::to_string(map.chunks.size()) + " chunks");
  }
  MOAT_ASSIGN_OR_RETURN(auto opened, OpenRegular(path));
  auto& [fd, size] = opened;
  if (size != map.size) {
    return FailedPrecondition(path + ": " + std::to_string(size) + " bytes, the chunk map says " +
                              std::to_string(map.size) + " (changed since it was chunked)");
  }
  const uint64_t length = map.ChunkLength(index);
  std::string out(length, '\0');
  MOAT_RETURN_IF_ERROR(
      PreadFull(fd.get(), path, static_cast<uint64_t>(index) * kChunkSize, out.data(), length));
  // The bytes go to the store under the map's hash: a file changed since ChunkFile must not put
  // other bytes under that name.
  const auto& expected = map.chunks[index];
  if (!expected) {
    if (!IsAllZero(out)) {
      return FailedPrecondition("chunk " + std::to_string(index) + " of " + path +
                                ": no longer all zero (changed since it was chunked)");
    }
    return out;
  }
  std::string hash = ChunkHash(out);
  if (hash != *expected) {
    return FailedPrecondition("chunk " + std::to_string(index) + " of " + path + ": hashes to " +
                              hash + ", the chunk map says " + *expected +
                              " (changed since it was chunked)");
  }
  return out;
}

}  // namespace moat::storage
